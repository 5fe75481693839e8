import Cluster
import Dispatch
import Glibc
import NIOCore
import NIOPosix
import NodeMap
import Synchronization
import Wire

/// Settings the shell needs beyond the protocol's.
struct ShellSettings {
    var family: AddressFamily
    var interfaces: [ClusterInterface]
    var group: IPAddress
    var port: Int
    var heartbeatPort: Int
    var ttl: Int?
    var mapPath: String
    var statusPath: String?
}

/// The daemon's thin shell around `ClusterNode`: UDP sockets (SwiftNIO), a timer, and the map and
/// status writers. Everything protocol-related happens in the node, on one event loop thread that
/// does no file I/O, so heartbeats keep time while files are written elsewhere.
final class Engine: @unchecked Sendable {
    let loop: EventLoop
    let sink: LogSink
    let shell: ShellSettings
    private var node: ClusterNode
    private var main: Channel?
    private var heartbeat: Channel?
    private var senders: [Channel] = []
    private var timer: Scheduled<Void>?
    private var timerDeadline: UInt64 = .max
    private let writer: FileWriter
    private var lastMapWrite: UInt64 = 0
    private var lastStatusWrite: UInt64 = 0
    private var writtenGeneration: UInt64 = .max
    private var groupAddress: SocketAddress
    private var counters = ShellCounters()
    private var stopped = false

    struct ShellCounters {
        var datagramsRx = 0
        var datagramsTx = 0
        var multicastTx = 0
        var unicastTx = 0
        var heartbeatsTx = 0
        var heartbeatsRx = 0
        var sendErrors = 0
        var lastSendErrorLog: UInt64 = 0
    }

    init(loop: EventLoop, node: ClusterNode, shell: ShellSettings, sink: LogSink) throws {
        self.loop = loop
        self.node = node
        self.shell = shell
        self.sink = sink
        self.writer = FileWriter(sink: sink)
        self.groupAddress = try SocketAddress(ipAddress: shell.group.description, port: shell.port)
    }

    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    // MARK: Start and stop

    func start(group elg: EventLoopGroup) throws {
        let anyHost = shell.family == .ipv4 ? "0.0.0.0" : "::"
        let handler = { (kind: Kind) in InboundHandler(engine: self, kind: kind) }
        do {
            main = try DatagramBootstrap(group: loop)
                .channelOption(.receivePacketInfo, value: true)
                .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler(.discovery)) } }
                .bind(host: anyHost, port: shell.port).wait()
        } catch {
            throw ConfigError("cannot bind UDP port \(shell.port): \(Self.describe(error))")
        }
        do {
            heartbeat = try DatagramBootstrap(group: loop)
                .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler(.heartbeat)) } }
                .bind(host: anyHost, port: shell.heartbeatPort).wait()
        } catch {
            throw ConfigError("cannot bind UDP heartbeat port \(shell.heartbeatPort): \(Self.describe(error))")
        }
        let mc = main as! MulticastChannel
        for i in shell.interfaces {
            do {
                try mc.joinGroup(groupAddress, device: i.device).wait()
            } catch {
                throw ConfigError("cannot join \(shell.group) on \(i.name): \(Self.describe(error))")
            }
            senders.append(try makeSender(for: i, host: anyHost))
        }
        try loop.submit {
            let effects = self.node.start(now: Self.now())
            self.perform(effects)
            self.afterInput()
        }.wait()
    }

    private func makeSender(for i: ClusterInterface, host: String) throws -> Channel {
        let ch = try DatagramBootstrap(group: loop).bind(host: host, port: 0).wait()
        let opts = ch as! SocketOptionProvider
        let ttl = shell.ttl ?? 1
        do {
            if shell.family == .ipv4 {
                var a = in_addr()
                a.s_addr = i.address.v4Value.bigEndian
                try opts.setIPMulticastIF(a).wait()
                try opts.setIPMulticastTTL(CUnsignedChar(ttl)).wait()
                try opts.setIPMulticastLoop(0).wait()
            } else {
                try opts.setIPv6MulticastIF(CUnsignedInt(i.index)).wait()
                try opts.setIPv6MulticastHops(CInt(ttl)).wait()
                try opts.setIPv6MulticastLoop(0).wait()
            }
        } catch {
            throw ConfigError("cannot set multicast options on \(i.name): \(Self.describe(error))")
        }
        return ch
    }

    static func describe(_ e: Error) -> String {
        if e is NIOMulticastNotSupportedError { return "the interface does not support multicast" }
        if let io = e as? IOError {
            return "\(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))"
        }
        return "\(e)"
    }

    /// Clean stop: leave, final map, close sockets.
    func stop() {
        let done: EventLoopFuture<Void> = loop.flatSubmit {
            self.stopped = true
            self.timer?.cancel()
            let effects = self.node.stop(now: Self.now())
            let writes = self.perform(effects)
            return EventLoopFuture.andAllComplete(writes, on: self.loop)
        }
        _ = try? done.wait()
        let snap = try? loop.submit { self.snapshot() }.wait()
        if let s = snap { writer.writeNow(map: s.0, mapPath: shell.mapPath, status: s.1, statusPath: shell.statusPath) }
        for c in [main, heartbeat].compactMap({ $0 }) + senders { _ = try? c.close().wait() }
    }

    /// Polls the cluster interfaces' addresses and tells the node when its aliases change
    /// (an address added or removed); getifaddrs runs off the protocol loop.
    func watchInterfaces(names: [String], family: AddressFamily, primary: IPAddress, initial: [IPAddress], source: AliasSource, every seconds: Int) {
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "discd.interfaces"))
        var last = initial
        var primaryMissing = false
        timer.schedule(deadline: .now() + .seconds(seconds), repeating: .seconds(seconds))
        timer.setEventHandler {
            guard let all = try? Interfaces.addresses() else { return }
            let present = all.contains { names.contains($0.device.name) && $0.address == primary }
            if !present && !primaryMissing {
                self.sink.write(.warning, "primary address \(primary) is gone from \(names.joined(separator: ",")); peers will declare this node dead")
            }
            primaryMissing = !present
            guard let now = try? Interfaces.otherAddresses(on: names, family: family, excluding: primary) else { return }
            if last == now { return }
            last = now
            self.loop.execute {
                self.sink.write(.notice, "interface addresses changed: aliases now \(now.map { "\($0)" })")
                self.perform(self.node.interfacesChanged(aliases: now.map { Alias($0, source: source) }, now: Self.now()))
                self.afterInput()
            }
        }
        timer.resume()
        interfaceTimer = timer
    }

    private var interfaceTimer: DispatchSourceTimer?

    // MARK: Inputs (on the loop)

    enum Kind { case discovery, heartbeat }

    func received(_ bytes: [UInt8], interfaceIndex: Int?, kind: Kind) {
        guard !stopped else { return }
        counters.datagramsRx += 1
        if kind == .heartbeat { counters.heartbeatsRx += 1 }
        var iface = 0
        if let ix = interfaceIndex, let pos = shell.interfaces.firstIndex(where: { $0.index == ix }) { iface = pos }
        let effects = node.receive(bytes, interface: iface, now: Self.now())
        perform(effects)
        afterInput()
    }

    private func fire() {
        guard !stopped else { return }
        timerDeadline = .max
        let now = Self.now()
        perform(node.tick(now: now))
        afterInput()
    }

    /// Reschedules the timer and hands the map to the writer when it changed.
    private func afterInput() {
        let now = Self.now()
        let next = min(node.nextDeadline, now + 1_000_000_000)
        if next < timerDeadline {
            timer?.cancel()
            timerDeadline = next
            timer = loop.scheduleTask(deadline: NIODeadline.uptimeNanoseconds(next)) { self.fire() }
        }
        let changed = node.map.generation != writtenGeneration
        if changed || now &- lastMapWrite > 2_000_000_000 || now &- lastStatusWrite > 1_000_000_000 {
            let (m, st) = snapshot()
            writtenGeneration = node.map.generation
            lastMapWrite = now
            lastStatusWrite = now
            writer.submit(map: m, mapPath: shell.mapPath, status: st, statusPath: shell.statusPath)
        }
    }

    private func snapshot() -> (MapSnapshot, String) {
        let now = Self.now()
        let snap = MapSnapshot(map: node.map, writtenAt: now, selfAddress: node.address)
        return (snap, statusJSON())
    }

    private func statusJSON() -> String {
        let c = node.counters
        let d = node.discovery.stats
        let det = node.detector?.stats
        var drops = c.drops.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ")
        drops = "{" + drops + "}"
        let fields: [(String, String)] = [
            ("datagrams_rx", "\(counters.datagramsRx)"),
            ("datagrams_tx", "\(counters.datagramsTx)"),
            ("multicast_tx", "\(counters.multicastTx)"),
            ("unicast_tx", "\(counters.unicastTx)"),
            ("relayed_tx", "\(d.relayed)"),
            ("duplicates", "\(d.duplicates)"),
            ("drops", drops),
            ("heartbeats_tx", "\(counters.heartbeatsTx)"),
            ("heartbeats_rx", "\(counters.heartbeatsRx)"),
            ("send_errors", "\(counters.sendErrors)"),
            ("members", "\(node.map.memberCount)"),
            ("nodes", "\(node.map.count)"),
            ("incarnation", "\(node.incarnation)"),
            ("generation", "\(node.map.generation)"),
            ("map_writes", "\(writer.writes)"),
            ("announces_tx", "\(d.announcesSent)"),
            ("suspicions", "\(det?.suspicions ?? 0)"),
            ("deaths_declared", "\(det?.deathsDeclared ?? 0)"),
            ("late_ticks", "\(det?.lateTicks ?? 0)"),
        ]
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}\n"
    }

    // MARK: Effects

    @discardableResult
    private func perform(_ effects: [Effect]) -> [EventLoopFuture<Void>] {
        var futures: [EventLoopFuture<Void>] = []
        for e in effects {
            switch e {
            case .multicast(let bytes, let except):
                for (i, s) in senders.enumerated() where i != except {
                    futures.append(send(bytes, to: groupAddress, on: s))
                    counters.multicastTx += 1
                }
            case .unicast(let bytes, let to):
                if let a = socketAddress(to, port: shell.port), let ch = main {
                    futures.append(send(bytes, to: a, on: ch))
                    counters.unicastTx += 1
                }
            case .heartbeat(let bytes, let to, let port):
                if let a = socketAddress(to, port: Int(port)), let ch = heartbeat {
                    futures.append(send(bytes, to: a, on: ch))
                    counters.heartbeatsTx += 1
                }
            case .log(let level, let line):
                sink.write(level, line)
            }
        }
        return futures
    }

    private func send(_ bytes: [UInt8], to: SocketAddress, on ch: Channel) -> EventLoopFuture<Void> {
        counters.datagramsTx += 1
        let buf = ch.allocator.buffer(bytes: bytes)
        let f = ch.writeAndFlush(AddressedEnvelope(remoteAddress: to, data: buf))
        f.whenFailure { err in
            self.counters.sendErrors += 1
            let now = Self.now()
            if now &- self.counters.lastSendErrorLog > 5_000_000_000 {
                self.counters.lastSendErrorLog = now
                self.sink.write(.warning, "send to \(to) failed: \(Self.describe(err)) (\(self.counters.sendErrors) send errors so far)")
            }
        }
        return f
    }

    private func socketAddress(_ ip: IPAddress, port: Int) -> SocketAddress? {
        if ip.isIPv4 {
            guard shell.family == .ipv4 else { return nil }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(port).bigEndian
            sin.sin_addr.s_addr = ip.v4Value.bigEndian
            return SocketAddress(sin, host: "")
        }
        guard shell.family == .ipv6 else { return nil }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = UInt16(port).bigEndian
        let b = ip.bytes16
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in for i in 0..<16 { raw[i] = b[i] } }
        if ip.isLinkLocalV6 { sin6.sin6_scope_id = UInt32(shell.interfaces[0].index) }
        return SocketAddress(sin6, host: "")
    }
}

/// Hands received datagrams to the engine, on the engine's loop.
final class InboundHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let engine: Engine
    let kind: Engine.Kind
    init(engine: Engine, kind: Engine.Kind) {
        self.engine = engine
        self.kind = kind
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let env = unwrapInboundIn(data)
        var buf = env.data
        let bytes = buf.readBytes(length: buf.readableBytes) ?? []
        engine.received(bytes, interfaceIndex: env.metadata?.packetInfo?.interfaceIndex, kind: kind)
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // ICMP port unreachable and the like surface here on UDP: not fatal for a datagram socket.
        engine.sink.write(.debug, "socket error: \(Engine.describe(error))")
    }
}

/// Writes the map and status files off the protocol loop (fsync can take milliseconds), keeping
/// only the newest pending snapshot.
final class FileWriter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "discd.files")
    private let state = Mutex<(pending: (MapSnapshot, String, String, String?)?, scheduled: Bool)>((nil, false))
    private let writesCount = Atomic<Int>(0)
    private let sink: LogSink
    private var lastError: String?

    init(sink: LogSink) { self.sink = sink }

    var writes: Int { writesCount.load(ordering: .relaxed) }

    func submit(map: MapSnapshot, mapPath: String, status: String, statusPath: String?) {
        let schedule = state.withLock { s -> Bool in
            s.pending = (map, mapPath, status, statusPath)
            if s.scheduled { return false }
            s.scheduled = true
            return true
        }
        if schedule { queue.async { self.drain() } }
    }

    private func drain() {
        while true {
            let job = state.withLock { s -> (MapSnapshot, String, String, String?)? in
                let j = s.pending
                s.pending = nil
                if j == nil { s.scheduled = false }
                return j
            }
            guard let (m, mp, st, sp) = job else { return }
            write(map: m, mapPath: mp, status: st, statusPath: sp)
        }
    }

    /// Writes synchronously (start-up check and final map on stop).
    func writeNow(map: MapSnapshot, mapPath: String, status: String, statusPath: String?) {
        queue.sync { write(map: map, mapPath: mapPath, status: status, statusPath: statusPath) }
    }

    private func write(map: MapSnapshot, mapPath: String, status: String, statusPath: String?) {
        do {
            try MapFile.write(map, to: mapPath)
            writesCount.add(1, ordering: .relaxed)
            lastError = nil
        } catch {
            let d = "\(error)"
            if d != lastError { sink.write(.error, "cannot write map file: \(d)") }
            lastError = d
        }
        if let sp = statusPath { writeText(status, to: sp) }
    }

    private func writeText(_ s: String, to path: String) {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let bytes = Array(s.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
        rename(tmp, path)
    }
}
