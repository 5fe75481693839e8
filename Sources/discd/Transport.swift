import CLinux
import Glibc
import NIOCore
import NIOPosix
import NodeMap

/// A datagram as a transport delivers it: its bytes and the cluster link it came from (an index
/// into the daemon's interface list).
struct Datagram: Sendable {
    var bytes: [UInt8]
    var link: Int
    /// An RDMA immediate-only send (no payload): the 32-bit immediate (`ProcessNotice`).
    var immediate: UInt32? = nil
    /// Where it came from: the UDP source address, or the RDMA source GID (for --allow-from).
    var source: IPAddress? = nil
}

/// The seam between the node driver and the wires: UDP multicast/unicast today, RDMA UD multicast
/// next. A transport delivers datagrams on the driver's event loop and sends what it is given.
protocol Transport: AnyObject, Sendable {
    var name: String { get }
    /// Binds, joins groups; datagrams are then handed to `deliver` on the driver's loop.
    func start(deliver: @escaping @Sendable (Datagram) -> Void) async throws
    /// To the cluster group on every link but `except`.
    func multicast(_ bytes: [UInt8], except: Int?)
    /// To one node's discovery port (`port` nil) or heartbeat port. False when this transport
    /// cannot reach the node (no address for it, down, too large): the driver tries the next one.
    func unicast(_ bytes: [UInt8], to: IPAddress, port: UInt16?) -> Bool
    func close() async
    var counters: TransportCounters { get }
    /// Unicasts go over the transport of lowest rank that reaches the node (RDMA 0, IP 1).
    var unicastRank: Int { get }
    /// Datagrams its receive sockets dropped so far (the kernel's count: the buffer was full), read
    /// on the driver's loop; 0 where the transport cannot tell.
    func receiveDrops() -> UInt64
}

extension Transport {
    var unicastRank: Int { 1 }
    func receiveDrops() -> UInt64 { 0 }
}

struct TransportCounters: Sendable {
    var datagramsRx = 0
    var datagramsTx = 0
    var multicastTx = 0
    var unicastTx = 0
    var heartbeatsTx = 0
    var heartbeatsRx = 0
    var sendErrors = 0
}

/// UDP over IPv4 or IPv6 (SwiftNIO): one socket on the discovery port that joined the group on
/// every cluster interface, one on the heartbeat port, and one multicast sender per interface.
final class UDPTransport: Transport, @unchecked Sendable {
    let name = "udp"
    let loop: EventLoop
    let family: AddressFamily
    let interfaces: [ClusterInterface]
    let group: IPAddress
    let port: Int
    let heartbeatPort: Int
    let ttl: Int?
    let sink: LogSink
    private let groupAddress: SocketAddress
    private var main: Channel?
    private var heartbeat: Channel?
    private var senders: [Channel] = []
    private var lastSendErrorLog: UInt64 = 0
    /// Touched on `loop` only.
    private(set) var counters = TransportCounters()

    init(
        loop: EventLoop, family: AddressFamily, interfaces: [ClusterInterface], group: IPAddress, port: Int,
        heartbeatPort: Int, ttl: Int?, sink: LogSink
    ) throws {
        self.loop = loop
        self.family = family
        self.interfaces = interfaces
        self.group = group
        self.port = port
        self.heartbeatPort = heartbeatPort
        self.ttl = ttl
        self.sink = sink
        self.groupAddress = try SocketAddress(ipAddress: group.description, port: port)
    }

    func start(deliver: @escaping @Sendable (Datagram) -> Void) async throws {
        let anyHost = family == .ipv4 ? "0.0.0.0" : "::"
        main = try await bind(port: port, what: "UDP port", handler: InboundHandler(transport: self, heartbeat: false, deliver: deliver))
        heartbeat = try await bind(
            port: heartbeatPort, what: "UDP heartbeat port", handler: InboundHandler(transport: self, heartbeat: true, deliver: deliver))
        let mc = main as! MulticastChannel
        for i in interfaces {
            do {
                try await mc.joinGroup(groupAddress, device: i.device).get()
            } catch {
                throw ConfigError("cannot join \(group) on \(i.name): \(describe(error))")
            }
            senders.append(try await makeSender(for: i, host: anyHost))
        }
    }

    static let readBatch = 16

    /// A receiving socket on `port` (any address of the family) with packet info, so each datagram
    /// says which interface it came in on.
    private func bind(port: Int, what: String, handler: InboundHandler) async throws -> Channel {
        do {
            return try await DatagramBootstrap(group: loop)
                .channelOption(.receivePacketInfo, value: true)
                // recvmmsg: up to 16 datagrams per system call, each in a 2 kB slice (a datagram is at
                // most Wire.maxDatagram = 1,200 bytes; a longer one is cut and refused as too long).
                .channelOption(.datagramVectorReadMessageCount, value: Self.readBatch)
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.readBatch * 2048))
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) }
                }
                .bind(host: family == .ipv4 ? "0.0.0.0" : "::", port: port).get()
        } catch {
            throw ConfigError("cannot bind \(what) \(port): \(describe(error))")
        }
    }

    private func makeSender(for i: ClusterInterface, host: String) async throws -> Channel {
        let ch = try await DatagramBootstrap(group: loop).bind(host: host, port: 0).get()
        let opts = ch as! SocketOptionProvider
        let ttl = self.ttl ?? 1
        do {
            if family == .ipv4 {
                var a = in_addr()
                a.s_addr = i.address.v4Value.bigEndian
                try await opts.setIPMulticastIF(a).get()
                try await opts.setIPMulticastTTL(CUnsignedChar(ttl)).get()
                try await opts.setIPMulticastLoop(0).get()
            } else {
                try await opts.setIPv6MulticastIF(CUnsignedInt(i.index)).get()
                try await opts.setIPv6MulticastHops(CInt(ttl)).get()
                try await opts.setIPv6MulticastLoop(0).get()
            }
        } catch {
            throw ConfigError("cannot set multicast options on \(i.name): \(describe(error))")
        }
        return ch
    }

    func close() async {
        for c in [main, heartbeat].compactMap({ $0 }) + senders { try? await c.close().get() }
    }

    /// The link (index into `interfaces`) a datagram came in on.
    func link(ofInterfaceIndex ix: Int?) -> Int {
        guard let ix, let pos = interfaces.firstIndex(where: { $0.index == ix }) else { return 0 }
        return pos
    }

    /// SO_MEMINFO's drop count (`sk_drops`: receive buffer full, or refused by the socket) of the
    /// discovery and heartbeat sockets, summed since they opened (the kernel's count is 32 bits and
    /// wraps: each look adds the wrapping difference from the last).
    func receiveDrops() -> UInt64 {
        for (i, ch) in [main, heartbeat].enumerated() {
            guard let opts = ch as? SocketOptionProvider else { continue }
            // On the channel's loop the future is already complete, and the callback runs at once.
            let f: EventLoopFuture<SocketMemInfo> = opts.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(discd_so_meminfo()))
            f.whenSuccess { m in
                self.dropsTotal &+= UInt64(m.drops &- self.dropsSeen[i])
                self.dropsSeen[i] = m.drops
            }
        }
        return dropsTotal
    }
    /// The kernel's last drop count of each receiving socket, and the sum of their rises.
    private var dropsSeen: [UInt32] = [0, 0]
    private var dropsTotal: UInt64 = 0

    fileprivate func received(heartbeat: Bool) {
        counters.datagramsRx += 1
        if heartbeat { counters.heartbeatsRx += 1 }
    }

    func multicast(_ bytes: [UInt8], except: Int?) {
        for (i, s) in senders.enumerated() where i != except {
            send(bytes, to: groupAddress, on: s)
            counters.multicastTx += 1
        }
    }

    func unicast(_ bytes: [UInt8], to ip: IPAddress, port: UInt16?) -> Bool {
        let ch = port == nil ? main : heartbeat
        guard let ch, let a = socketAddress(ip, port: port.map(Int.init) ?? self.port) else { return false }
        send(bytes, to: a, on: ch)
        if port == nil { counters.unicastTx += 1 } else { counters.heartbeatsTx += 1 }
        return true
    }

    private func send(_ bytes: [UInt8], to: SocketAddress, on ch: Channel) {
        counters.datagramsTx += 1
        let buf = ch.allocator.buffer(bytes: bytes)
        ch.writeAndFlush(AddressedEnvelope(remoteAddress: to, data: buf)).whenFailure { err in
            self.counters.sendErrors += 1
            let now = NIODeadline.now().uptimeNanoseconds
            if now &- self.lastSendErrorLog > 5_000_000_000 {
                self.lastSendErrorLog = now
                self.sink.write(DaemonEvent.sendFailed(to: "\(to)", error: describe(err), total: self.counters.sendErrors))
            }
        }
    }

    /// The link a link-local IPv6 address was last heard on (set by the driver): such an address
    /// means nothing without its interface, and on a gateway that is not always the first one.
    var linkOf: ((IPAddress) -> Int?)?

    func socketAddress(_ ip: IPAddress, port: Int) -> SocketAddress? {
        if ip.isIPv4 {
            guard family == .ipv4 else { return nil }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(port).bigEndian
            sin.sin_addr.s_addr = ip.v4Value.bigEndian
            return SocketAddress(sin, host: "")
        }
        guard family == .ipv6 else { return nil }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = UInt16(port).bigEndian
        let b = ip.bytes16
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in for i in 0..<16 { raw[i] = b[i] } }
        if ip.isLinkLocalV6 {
            let link = linkOf?(ip) ?? 0
            sin6.sin6_scope_id = UInt32(interfaces[min(max(link, 0), interfaces.count - 1)].index)
        }
        return SocketAddress(sin6, host: "")
    }
}

/// `getsockopt(SO_MEMINFO)`'s answer: the kernel's `SK_MEMINFO_*` counters, of which the last
/// (`SK_MEMINFO_DROPS`) is the number of datagrams the socket dropped.
struct SocketMemInfo: Sendable {
    var rmemAlloc: UInt32 = 0, rcvbuf: UInt32 = 0, wmemAlloc: UInt32 = 0, sndbuf: UInt32 = 0
    var fwdAlloc: UInt32 = 0, wmemQueued: UInt32 = 0, optmem: UInt32 = 0, backlog: UInt32 = 0
    var drops: UInt32 = 0
}

/// Hands received datagrams to the driver, on the transport's loop.
final class InboundHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let transport: UDPTransport
    let heartbeat: Bool
    let deliver: @Sendable (Datagram) -> Void
    init(transport: UDPTransport, heartbeat: Bool, deliver: @escaping @Sendable (Datagram) -> Void) {
        self.transport = transport
        self.heartbeat = heartbeat
        self.deliver = deliver
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let env = unwrapInboundIn(data)
        var buf = env.data
        let bytes = buf.readBytes(length: buf.readableBytes) ?? []
        transport.received(heartbeat: heartbeat)
        deliver(
            Datagram(
                bytes: bytes, link: transport.link(ofInterfaceIndex: env.metadata?.packetInfo?.interfaceIndex),
                source: Interfaces.ipAddress(env.remoteAddress)))
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // ICMP port unreachable and the like surface here on UDP: not fatal for a datagram socket.
        transport.sink.write(DaemonEvent.socketError(error: describe(error)))
    }
}

func describe(_ e: Error) -> String {
    if e is NIOMulticastNotSupportedError { return "the interface does not support multicast" }
    if let io = e as? IOError {
        return "\(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))"
    }
    return "\(e)"
}
