import CVerbs
import Cluster
import Glibc
import MapStore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NodeMap

/// How the RDMA transport is chosen: `--no-rdma`, `--rdma-device NAME`, `--rdma-port N`.
struct RDMAOptions: Sendable {
    var enabled = true
    var device: String?
    var port: Int?
}

/// The RDMA transport's state, as the status file shows it (`"rdma": {...}`).
struct RDMAStatus: Sendable {
    enum State: String, Sendable { case off, down, up }
    var state: State = .down
    /// Why it is down (empty while up).
    var reason = ""
    var device = ""
    var port = 0
    var gid = ""
    var qpn: UInt32 = 0
    var qkey: UInt32 = 0
    /// Largest datagram the path carries (the port's active MTU); larger ones go by IP only.
    var mtu = 0
    var datagramsRx = 0
    var datagramsTx = 0
    var multicastTx = 0
    var unicastTx = 0
    var immediateRx = 0
    /// Our own multicasts looped back by the fabric (not handed on).
    var loopback = 0
    /// Datagrams larger than the MTU (sent over IP only).
    var oversize = 0
    var sendErrors = 0
    var receiveErrors = 0
    var ups = 0
    var downs = 0

    func fields(into f: inout EventFields) {
        f.add("state", state.rawValue)
        f.add("reason", reason)
        f.add("device", device)
        f.add("port", port)
        f.add("gid", gid)
        f.add("qpn", UInt64(qpn))
        f.add("qkey", UInt64(qkey))
        f.add("mtu", mtu)
        f.add("datagrams_rx", datagramsRx)
        f.add("datagrams_tx", datagramsTx)
        f.add("multicast_tx", multicastTx)
        f.add("unicast_tx", unicastTx)
        f.add("immediate_rx", immediateRx)
        f.add("loopback", loopback)
        f.add("oversize", oversize)
        f.add("send_errors", sendErrors)
        f.add("receive_errors", receiveErrors)
        f.add("ups", ups)
        f.add("downs", downs)
    }
}

/// Why the RDMA transport cannot run (no device, port down, a verb failed): it stays down and
/// retries; discd runs over IP meanwhile.
struct RDMAUnavailable: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
    static func verb(_ name: String) -> RDMAUnavailable { RDMAUnavailable("\(name) failed: \(errnoText())") }
}

func errnoText(_ e: Int32 = errno) -> String { "\(String(cString: strerror(e))) (errno \(e))" }

/// RDMA UD multicast and unicast over librdmacm and libibverbs (InfiniBand, RoCE, Soft-RoCE).
///
/// One endpoint on the device and port that serve the first cluster interface's address (or the
/// ones `--rdma-device`/`--rdma-port` name): a UD queue pair attached to the cluster's group (by
/// verbs on RoCE, by `rdma_join_multicast` on InfiniBand: see `Endpoint`), one registered buffer for
/// receive and send slots. The same datagrams as the IP transport; our endpoint (GID, QPN, Q_Key)
/// is published as the node's RDMA capability so that others unicast detector traffic to it.
///
/// Threads: the transport's event thread sleeps in poll(2) on the completion channel, the rdma_cm
/// event channel, the device's async-event fd and a wake-up eventfd — it never spins. It takes
/// completions, reposts receives, and hands datagrams to the node's event loop in one batch per
/// wake-up. Sends are posted from the node's loop under `lock`. The device going away (port down,
/// `rdma link delete`, device removal) tears the endpoint down on the event thread: discd goes on
/// over IP, says so (`rdma.down`), and reopens when the device is back (`rdma.up`).
final class RDMATransport: Transport, @unchecked Sendable {
    let name = "rdma"
    let unicastRank = 0
    let loop: EventLoop
    let sink: LogSink
    let options: RDMAOptions
    let interfaces: [ClusterInterface]
    let group: IPAddress
    /// Multicast hop limit (`-m TTL`; 1 by default, as for IP).
    let ttl: Int?
    /// How often the event thread checks that the device is still there (a device without
    /// disassociate support, like rxe, sends no event when it is being removed).
    static let presenceCheckMillis: Int32 = 500
    /// Receive and send slots; a slot holds the 40-byte GRH and the largest datagram.
    static let recvSlots = 256
    static let sendSlots = 128
    static let slotSize = 2048
    static let grhSize = 40
    /// Retry interval while down.
    static let retryMillis: Int32 = 2000
    static let joinTimeoutMillis = 5000

    private let lock = NIOLock()
    /// The endpoint the loop sends on (nil while down); guarded by `lock`.
    private var sendEndpoint: Endpoint?
    /// Guarded by `lock`.
    private var state = RDMAStatus()
    /// Wakes the event thread (stop).
    private let wakeup = WakePipe()
    private let stopping = NIOLockedValueBox(false)
    private var pool: NIOThreadPool?
    private var deliver: (@Sendable (Datagram) -> Void)?

    /// The RDMA endpoint of a node of the map (set by the driver; called on the loop).
    var peerEndpoint: ((IPAddress) -> Capability?)?
    /// Our endpoint appeared (capability) or went away (nil); called on the loop.
    var endpointChanged: ((Capability?) -> Void)?

    init(loop: EventLoop, interfaces: [ClusterInterface], group: IPAddress, ttl: Int?, options: RDMAOptions, sink: LogSink) {
        self.loop = loop
        self.interfaces = interfaces
        self.group = group
        self.ttl = ttl
        self.options = options
        self.sink = sink
    }

    var status: RDMAStatus { lock.withLock { state } }

    var counters: TransportCounters { TransportCounters(status) }

    /// The devices present now (names), or a reason there are none. Checked at start so that a
    /// device named by `--rdma-device` that does not exist is a clear error, not a silent IP-only node.
    static func deviceNames() -> [String] {
        var n: Int32 = 0
        guard let list = ibv_get_device_list(&n) else { return [] }
        defer { ibv_free_device_list(list) }
        var names: [String] = []
        for i in 0..<Int(n) {
            if let d = list[i], let c = ibv_get_device_name(d) { names.append(String(cString: c)) }
        }
        return names
    }

    func start(deliver: @escaping @Sendable (Datagram) -> Void) async throws {
        self.deliver = deliver
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        self.pool = pool
        // The first attempt runs before start returns, so a node with RDMA announces it at once.
        let first = await withCheckedContinuation { (k: CheckedContinuation<Endpoint?, Never>) in
            pool.submit { _ in k.resume(returning: self.attemptOpen()) }
        }
        pool.submit { _ in self.eventThread(first) }
    }

    func close() async {
        stopping.withLockedValue { $0 = true }
        wakeup.wake()
        try? await pool?.shutdownGracefully()
        wakeup.close()
    }

    // MARK: Sending (on the node's loop)

    func multicast(_ bytes: [UInt8], except: Int?) {
        lock.withLock {
            guard let e = sendEndpoint, except != e.link else { return }
            if post(bytes, on: e, ah: e.groupAH, qpn: e.groupQPN, qkey: e.groupQKey) { state.multicastTx += 1 }
        }
    }

    /// Over RDMA when the node advertises an RDMA endpoint and ours is up, else false (the driver
    /// then sends over IP). `port` means nothing here: one queue pair takes every datagram.
    func unicast(_ bytes: [UInt8], to ip: IPAddress, port: UInt16?) -> Bool {
        guard case .rdma(let gh, let gl, let qpn, let qkey)? = peerEndpoint?(ip) else { return false }
        return lock.withLock {
            guard let e = sendEndpoint else { return false }
            guard let ah = e.addressHandle(gidHi: gh, gidLo: gl) else {
                state.sendErrors += 1
                return false
            }
            guard post(bytes, on: e, ah: ah, qpn: qpn, qkey: qkey) else { return false }
            state.unicastTx += 1
            return true
        }
    }

    /// Holds `lock`.
    private func post(_ bytes: [UInt8], on e: Endpoint, ah: UnsafeMutablePointer<ibv_ah>?, qpn: UInt32, qkey: UInt32) -> Bool {
        guard bytes.count <= e.mtu else {
            state.oversize += 1
            return false
        }
        state.sendErrors += e.reapSends()
        guard let slot = e.freeSend.popLast() else {
            state.sendErrors += 1
            return false
        }
        let p = e.slot(slot)
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        let rc = discd_post_ud_send(
            e.qp, ah, qpn, qkey, e.mr.pointee.lkey, p, UInt32(bytes.count), UInt64(slot))
        guard rc == 0 else {
            e.freeSend.append(slot)
            state.sendErrors += 1
            return false
        }
        state.datagramsTx += 1
        return true
    }

    // MARK: The event thread

    private var isStopping: Bool { stopping.withLockedValue { $0 } }

    private func attemptOpen() -> Endpoint? {
        do {
            let e = try Endpoint.open(interfaces: interfaces, group: group, options: options, ttl: ttl)
            install(e)
            return e
        } catch {
            setDown(reason: "\(error)")
            return nil
        }
    }

    private func install(_ e: Endpoint) {
        let cap = e.capability
        let s: RDMAStatus = lock.withLock {
            sendEndpoint = e
            state.state = .up
            state.reason = ""
            state.device = e.deviceName
            state.port = Int(e.portNum)
            state.gid = e.gidText
            state.qpn = e.qpn
            state.qkey = e.qkey
            state.mtu = e.mtu
            state.ups += 1
            return state
        }
        sink.write(DaemonEvent.rdmaUp(device: s.device, port: s.port, gid: s.gid, qpn: s.qpn, qkey: s.qkey, mtu: s.mtu))
        loop.execute { self.endpointChanged?(cap) }
    }

    /// Records why we are down; logs only when the reason changes (a node without RDMA says so once).
    private func setDown(reason: String) {
        let (changed, wasUp) = lock.withLock { () -> (Bool, Bool) in
            let wasUp = state.state == .up
            let changed = wasUp || state.reason != reason
            state.state = .down
            state.reason = reason
            if wasUp { state.downs += 1 }
            return (changed, wasUp)
        }
        if changed { sink.write(DaemonEvent.rdmaDown(reason: reason, wasUp: wasUp)) }
    }

    private func eventThread(_ first: Endpoint?) {
        var ep = first
        var batch: [Datagram] = []
        while !isStopping {
            guard let e = ep else {
                // Down: wait for a retry or for stop, then try again.
                var pfd = pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, Self.retryMillis)
                wakeup.drain()
                if isStopping { break }
                ep = attemptOpen()
                continue
            }
            var fds = [
                pollfd(fd: e.compFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: e.cmFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: e.asyncFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0),
            ]
            let n = poll(&fds, nfds_t(fds.count), Self.presenceCheckMillis)
            if n < 0 {
                if errno == EINTR { continue }
                teardown(e, reason: "poll failed: \(errnoText())")
                ep = nil
                continue
            }
            if fds[3].revents != 0 { wakeup.drain() }
            if fds[0].revents != 0 {
                receive(e, into: &batch)
                if !batch.isEmpty, let deliver {
                    let b = batch
                    loop.execute { for d in b { deliver(d) } }
                    batch.removeAll(keepingCapacity: true)
                }
            }
            var lost: String?
            if fds[1].revents != 0, let r = e.cmEvents() { lost = r }
            if lost == nil, fds[2].revents != 0, let r = e.asyncEvents() { lost = r }
            if lost == nil, !e.devicePresent { lost = "device \(e.deviceName) removed" }
            if let lost {
                teardown(e, reason: lost)
                ep = nil
            }
        }
        if let e = ep { teardown(e, reason: "stopped", quiet: true) }
    }

    /// Takes the completion event, re-arms, and drains the receive queue.
    private func receive(_ e: Endpoint, into batch: inout [Datagram]) {
        var cq: UnsafeMutablePointer<ibv_cq>?
        var ctx: UnsafeMutableRawPointer?
        if ibv_get_cq_event(e.compChannel, &cq, &ctx) == 0 {
            ibv_ack_cq_events(e.recvCQ, 1)
        }
        _ = ibv_req_notify_cq(e.recvCQ, 0)
        var wcs = [ibv_wc](repeating: ibv_wc(), count: 16)
        var rx = 0, imm = 0, loop = 0, errs = 0
        while true {
            let got = wcs.withUnsafeMutableBufferPointer { ibv_poll_cq(e.recvCQ, 16, $0.baseAddress) }
            if got <= 0 { break }
            for i in 0..<Int(got) {
                let wc = wcs[i]
                let slot = Int(wc.wr_id)
                defer { e.repost(slot) }
                guard wc.status == IBV_WC_SUCCESS else {
                    errs += 1
                    continue
                }
                let base = e.slot(slot)
                let len = Int(wc.byte_len) - Self.grhSize
                if wc.src_qp == e.qpn, e.isOwnSource(grh: base) {
                    loop += 1
                    continue
                }
                if len <= 0 {
                    if wc.wc_flags & IBV_WC_WITH_IMM.rawValue != 0 {
                        imm += 1
                        var w = wc
                        batch.append(
                            Datagram(bytes: [], link: e.link, immediate: discd_wc_imm(&w), source: e.sourceAddress(grh: base)))
                    } else {
                        errs += 1
                    }
                    continue
                }
                let payload = UnsafeRawBufferPointer(start: base + Self.grhSize, count: min(len, Self.slotSize - Self.grhSize))
                rx += 1
                batch.append(Datagram(bytes: Array(payload), link: e.link, source: e.sourceAddress(grh: base)))
            }
        }
        lock.withLock {
            state.datagramsRx += rx
            state.immediateRx += imm
            state.loopback += loop
            state.receiveErrors += errs
        }
    }

    private func teardown(_ e: Endpoint, reason: String, quiet: Bool = false) {
        lock.withLock { sendEndpoint = nil }
        e.destroy()
        if !quiet {
            setDown(reason: reason)
            loop.execute { self.endpointChanged?(nil) }
        }
    }
}

/// One open RDMA endpoint: every verbs resource, created together and destroyed together.
/// Receive-side members are used on the event thread only; send-side ones under the transport's lock.
///
/// Two ways to open one:
/// - **RoCE** (an Ethernet port with a RoCE v2 GID for the interface's address): verbs only. We
///   open the device, take the UD queue pair to RTS ourselves and attach it to the group's GID; the
///   IP membership the group needs (IGMP/MLD, and the host accepting the group's packets) is the IP
///   transport's, joined on the same interface. librdmacm is not used here on purpose: it keeps a
///   device's context open after the device is removed when no other device is left (its device
///   list sync stops early on an empty list), so `rdma link delete` of a device without
///   disassociate support (rxe) would hang for as long as discd runs.
/// - **rdma_cm** (InfiniBand, where the join needs the subnet administrator): an rdma_cm ID bound
///   to the interface's address, `rdma_create_qp`, `rdma_join_multicast`.
final class Endpoint: @unchecked Sendable {
    enum Mode { case roce, cm }
    let mode: Mode
    /// rdma_cm mode only.
    var channel: UnsafeMutablePointer<rdma_event_channel>?
    var id: UnsafeMutablePointer<rdma_cm_id>?
    /// RoCE mode: the context we opened (rdma_cm mode: the ID's).
    var context: UnsafeMutablePointer<ibv_context>!
    var pd: UnsafeMutablePointer<ibv_pd>!
    var compChannel: UnsafeMutablePointer<ibv_comp_channel>!
    var recvCQ: UnsafeMutablePointer<ibv_cq>!
    var sendCQ: UnsafeMutablePointer<ibv_cq>!
    var qp: UnsafeMutablePointer<ibv_qp>!
    var mr: UnsafeMutablePointer<ibv_mr>!
    var buffer: UnsafeMutableRawPointer!
    var groupAH: UnsafeMutablePointer<ibv_ah>?
    var groupQPN: UInt32 = 0
    var groupQKey: UInt32 = 0
    var joined = false
    var attached = false
    var groupAddr = sockaddr_storage()
    var groupGID = ibv_gid()
    var sgidIndex: UInt8 = 0
    var portNum: UInt8 = 0
    var deviceName = ""
    /// The device's uverbs sysfs node: gone as soon as the device is being unregistered.
    var devPath = ""
    var mtu = 0
    var qpn: UInt32 = 0
    var qkey: UInt32 = 0
    var gid = [UInt8](repeating: 0, count: 16)
    var link = 0
    var freeSend: [Int] = []
    /// Unicast address handles by GID, bounded (cleared when full).
    var handles: [IPAddress: UnsafeMutablePointer<ibv_ah>] = [:]
    static let maxHandles = 4096
    /// The Q_Key of discd's queue pairs: librdmacm's for UDP-port-space IDs (RDMA_UDP_QKEY), so
    /// rdma_cm peers (and tools like mckey) interoperate on the group.
    static let qkey: UInt32 = 0x0123_4567
    static let unicastHopLimit: UInt8 = 64

    var compFD: Int32 { compChannel.pointee.fd }
    var cmFD: Int32 { channel?.pointee.fd ?? -1 }
    var asyncFD: Int32 { context.pointee.async_fd }
    var gidAddress: IPAddress { IPAddress(bytes: gid)! }
    var gidText: String { MapRendering.gidHex(hi: gidAddress.hi, lo: gidAddress.lo) }
    var capability: Capability {
        let a = gidAddress
        return .rdma(gidHi: a.hi, gidLo: a.lo, qpn: qpn, qkey: qkey)
    }
    var devicePresent: Bool { devPath.isEmpty || access(devPath, F_OK) == 0 }

    private init(mode: Mode) { self.mode = mode }

    func slot(_ i: Int) -> UnsafeMutableRawPointer { buffer + i * RDMATransport.slotSize }

    func repost(_ slot: Int) {
        guard slot < RDMATransport.recvSlots else { return }
        _ = discd_post_recv(qp, mr.pointee.lkey, self.slot(slot), UInt32(RDMATransport.slotSize), UInt64(slot))
    }

    /// Whether a received datagram's GRH names our own GID (our multicast looped back).
    /// The packet's source GID as an address (on RoCE v2 with IPv4, the sender's IPv4 address).
    func sourceAddress(grh: UnsafeMutableRawPointer) -> IPAddress? {
        var src = [UInt8](repeating: 0, count: 16)
        discd_grh_source_gid(grh.assumingMemoryBound(to: UInt8.self), &src)
        return IPAddress(bytes: src)
    }

    func isOwnSource(grh: UnsafeMutableRawPointer) -> Bool {
        var src = [UInt8](repeating: 0, count: 16)
        discd_grh_source_gid(grh.assumingMemoryBound(to: UInt8.self), &src)
        return src == gid
    }

    /// Frees the send slots whose sends completed; returns how many completed in error.
    func reapSends() -> Int {
        var wcs = [ibv_wc](repeating: ibv_wc(), count: 16)
        var errors = 0
        while true {
            let got = wcs.withUnsafeMutableBufferPointer { ibv_poll_cq(sendCQ, 16, $0.baseAddress) }
            if got <= 0 { break }
            for i in 0..<Int(got) {
                freeSend.append(Int(wcs[i].wr_id))
                if wcs[i].status != IBV_WC_SUCCESS { errors += 1 }
            }
        }
        return errors
    }

    func addressHandle(gidHi: UInt64, gidLo: UInt64) -> UnsafeMutablePointer<ibv_ah>? {
        let key = IPAddress(hi: gidHi, lo: gidLo)
        if let h = handles[key] { return h }
        if handles.count >= Self.maxHandles {
            for h in handles.values { ibv_destroy_ah(h) }
            handles.removeAll()
        }
        let raw = key.bytes16
        guard
            let ah = raw.withUnsafeBufferPointer({
                discd_create_ah_gid(pd, portNum, sgidIndex, $0.baseAddress, Self.unicastHopLimit)
            })
        else { return nil }
        handles[key] = ah
        return ah
    }

    /// rdma_cm events while up: device removal, address change and a failed group mean the endpoint
    /// is gone (the reason); anything else is acknowledged and ignored.
    func cmEvents() -> String? {
        guard let channel else { return nil }
        var lost: String?
        for _ in 0..<16 {
            var ev: UnsafeMutablePointer<rdma_cm_event>?
            guard rdma_get_cm_event(channel, &ev) == 0, let ev else { break }
            switch ev.pointee.event {
            case RDMA_CM_EVENT_DEVICE_REMOVAL: lost = "device \(deviceName) removed"
            case RDMA_CM_EVENT_ADDR_CHANGE: lost = "address of \(deviceName) changed"
            case RDMA_CM_EVENT_MULTICAST_ERROR: lost = "multicast group on \(deviceName) failed"
            default: break
            }
            rdma_ack_cm_event(ev)
        }
        return lost
    }

    /// Device async events: a port or device error means the endpoint is gone.
    func asyncEvents() -> String? {
        var lost: String?
        for _ in 0..<16 {
            var ev = ibv_async_event()
            guard ibv_get_async_event(context, &ev) == 0 else { break }
            switch ev.event_type {
            case IBV_EVENT_PORT_ERR where ev.element.port_num == Int32(portNum):
                lost = "port \(portNum) of \(deviceName) down"
            case IBV_EVENT_DEVICE_FATAL: lost = "device \(deviceName) failed"
            case IBV_EVENT_QP_FATAL, IBV_EVENT_CQ_ERR: lost = "queue pair on \(deviceName) failed"
            case IBV_EVENT_GID_CHANGE: lost = "GID table of \(deviceName) changed"
            default: break
            }
            ibv_ack_async_event(&ev)
        }
        return lost
    }

    /// Opens the endpoint on the first cluster interface an RDMA device serves (or the one
    /// `options.device` names): RoCE by verbs, else rdma_cm; joins `group`, posts the receives.
    static func open(interfaces: [ClusterInterface], group: IPAddress, options: RDMAOptions, ttl: Int?) throws -> Endpoint {
        let names = RDMATransport.deviceNames()
        guard !names.isEmpty else { throw RDMAUnavailable("no RDMA device") }
        if let want = options.device, !names.contains(want) {
            throw RDMAUnavailable("RDMA device \(want) not present (present: \(names.joined(separator: ", ")))")
        }
        var failures: [String] = []
        for (link, i) in interfaces.enumerated() {
            do {
                if let e = try openRoCE(i, link: link, group: group, options: options, ttl: ttl) { return e }
            } catch {
                failures.append("\(i.name): \(error)")
                continue
            }
            do {
                return try openCM(i, link: link, group: group, options: options)
            } catch {
                failures.append("\(i.name): \(error)")
            }
        }
        throw RDMAUnavailable(failures.joined(separator: "; "))
    }

    /// nil when no RoCE port has a RoCE v2 GID for the interface's address (then rdma_cm is tried).
    private static func openRoCE(
        _ i: ClusterInterface, link: Int, group: IPAddress, options: RDMAOptions, ttl: Int?
    ) throws -> Endpoint? {
        var n: Int32 = 0
        guard let list = ibv_get_device_list(&n) else { return nil }
        defer { ibv_free_device_list(list) }
        let want = i.address.bytes16
        for d in 0..<Int(n) {
            guard let dev = list[d], let cname = ibv_get_device_name(dev) else { continue }
            let name = String(cString: cname)
            if let w = options.device, w != name { continue }
            guard let ctx = ibv_open_device(dev) else { continue }
            var da = ibv_device_attr()
            var found: (port: UInt8, index: UInt8, attr: ibv_port_attr)?
            if ibv_query_device(ctx, &da) == 0 {
                search: for port in 1...max(1, Int(da.phys_port_cnt)) {
                    if let p = options.port, p != port { continue }
                    var pa = ibv_port_attr()
                    guard discd_query_port(ctx, UInt8(port), &pa) == 0, pa.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET) else {
                        continue
                    }
                    for idx in 0..<min(Int(pa.gid_tbl_len), 256) {
                        var entry = ibv_gid_entry()
                        guard ibv_query_gid_ex(ctx, UInt32(port), UInt32(idx), &entry, 0) == 0 else { continue }
                        let g = withUnsafeBytes(of: entry.gid.raw) { Array($0) }
                        if g == want, entry.gid_type == IBV_GID_TYPE_ROCE_V2.rawValue, Int(entry.ndev_ifindex) == i.index {
                            found = (UInt8(port), UInt8(idx), pa)
                            break search
                        }
                    }
                }
            }
            guard let found else {
                ibv_close_device(ctx)
                continue
            }
            let e = Endpoint(mode: .roce)
            e.context = ctx
            e.link = link
            e.deviceName = name
            e.devPath = String(cString: discd_device_dev_path(dev))
            e.portNum = found.port
            e.sgidIndex = found.index
            e.gid = want
            do {
                try e.setUpRoCE(found.attr, group: group, hopLimit: UInt8(clamping: ttl ?? 1))
            } catch {
                e.destroy()
                throw error
            }
            return e
        }
        return nil
    }

    private func setUpRoCE(_ pa: ibv_port_attr, group: IPAddress, hopLimit: UInt8) throws {
        guard pa.state == IBV_PORT_ACTIVE else { throw RDMAUnavailable("port \(portNum) of \(deviceName) is not active") }
        mtu = 128 << Int(pa.active_mtu.rawValue)
        try createQueues()
        guard let qp = ibv_create_qp(pd, &qpInit) else { throw RDMAUnavailable.verb("ibv_create_qp") }
        self.qp = qp
        qpn = qp.pointee.qp_num
        qkey = Self.qkey
        guard discd_ud_qp_to_rts(qp, portNum, qkey) == 0 else { throw RDMAUnavailable.verb("ibv_modify_qp (UD to RTS)") }
        try registerAndPost()
        // The group's GID: the IPv4-mapped group (RoCE v2 over IPv4) or the IPv6 group.
        let mgid = group.bytes16
        withUnsafeMutableBytes(of: &groupGID.raw) { raw in for k in 0..<16 { raw[k] = mgid[k] } }
        guard ibv_attach_mcast(qp, &groupGID, 0) == 0 else { throw RDMAUnavailable.verb("ibv_attach_mcast \(group)") }
        attached = true
        guard let ah = mgid.withUnsafeBufferPointer({ discd_create_ah_gid(pd, portNum, sgidIndex, $0.baseAddress, hopLimit) }) else {
            throw RDMAUnavailable.verb("ibv_create_ah (group)")
        }
        groupAH = ah
        groupQPN = 0xFF_FFFF
        groupQKey = qkey
        try makeNonBlocking()
    }

    private var qpInit = ibv_qp_init_attr()

    private func createQueues() throws {
        guard let pd = ibv_alloc_pd(context) else { throw RDMAUnavailable.verb("ibv_alloc_pd") }
        self.pd = pd
        guard let cc = ibv_create_comp_channel(context) else { throw RDMAUnavailable.verb("ibv_create_comp_channel") }
        compChannel = cc
        guard let rcq = ibv_create_cq(context, Int32(RDMATransport.recvSlots), nil, cc, 0) else {
            throw RDMAUnavailable.verb("ibv_create_cq")
        }
        recvCQ = rcq
        guard let scq = ibv_create_cq(context, Int32(RDMATransport.sendSlots), nil, nil, 0) else {
            throw RDMAUnavailable.verb("ibv_create_cq")
        }
        sendCQ = scq
        qpInit.send_cq = scq
        qpInit.recv_cq = rcq
        qpInit.qp_type = IBV_QPT_UD
        qpInit.cap.max_send_wr = UInt32(RDMATransport.sendSlots)
        qpInit.cap.max_recv_wr = UInt32(RDMATransport.recvSlots)
        qpInit.cap.max_send_sge = 1
        qpInit.cap.max_recv_sge = 1
    }

    private func registerAndPost() throws {
        let size = (RDMATransport.recvSlots + RDMATransport.sendSlots) * RDMATransport.slotSize
        var mem: UnsafeMutableRawPointer?
        guard posix_memalign(&mem, 4096, size) == 0, let mem else { throw RDMAUnavailable("out of memory") }
        buffer = mem
        memset(mem, 0, size)
        guard let mr = discd_reg_mr(pd, mem, size) else { throw RDMAUnavailable.verb("ibv_reg_mr") }
        self.mr = mr
        for s in 0..<RDMATransport.recvSlots {
            guard discd_post_recv(qp, mr.pointee.lkey, slot(s), UInt32(RDMATransport.slotSize), UInt64(s)) == 0 else {
                throw RDMAUnavailable.verb("ibv_post_recv")
            }
        }
        freeSend = Array(RDMATransport.recvSlots..<(RDMATransport.recvSlots + RDMATransport.sendSlots))
        guard ibv_req_notify_cq(recvCQ, 0) == 0 else { throw RDMAUnavailable.verb("ibv_req_notify_cq") }
    }

    /// From here on the event thread polls these without blocking.
    private func makeNonBlocking() throws {
        for fd in [cmFD, compFD, asyncFD] where fd >= 0 {
            let fl = fcntl(fd, F_GETFL)
            guard fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 else { throw RDMAUnavailable.verb("fcntl") }
        }
    }

    private static func openCM(_ i: ClusterInterface, link: Int, group: IPAddress, options: RDMAOptions) throws -> Endpoint {
        let e = Endpoint(mode: .cm)
        e.link = link
        do {
            guard let ch = rdma_create_event_channel() else { throw RDMAUnavailable.verb("rdma_create_event_channel") }
            e.channel = ch
            var idp: UnsafeMutablePointer<rdma_cm_id>?
            guard rdma_create_id(ch, &idp, nil, RDMA_PS_UDP) == 0, let id = idp else { throw RDMAUnavailable.verb("rdma_create_id") }
            e.id = id
            try e.setUpCM(i, group: group, options: options)
        } catch {
            e.destroy()
            throw error
        }
        return e
    }

    private func setUpCM(_ i: ClusterInterface, group: IPAddress, options: RDMAOptions) throws {
        guard let id else { return }
        var local = Self.socketAddress(i.address, scope: i.index)
        let rc = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { rdma_bind_addr(id, $0) }
        }
        guard rc == 0, let verbs = id.pointee.verbs else {
            throw RDMAUnavailable("no RDMA device serves \(i.address) (rdma_bind_addr: \(errnoText()))")
        }
        context = verbs
        deviceName = String(cString: ibv_get_device_name(verbs.pointee.device))
        devPath = String(cString: discd_device_dev_path(verbs.pointee.device))
        if let want = options.device, want != deviceName {
            throw RDMAUnavailable("\(i.address) is served by \(deviceName), not \(want)")
        }
        portNum = id.pointee.port_num
        if let p = options.port, p != Int(portNum) {
            throw RDMAUnavailable("\(i.address) is on port \(portNum) of \(deviceName), not port \(p)")
        }
        var pa = ibv_port_attr()
        guard discd_query_port(verbs, portNum, &pa) == 0 else { throw RDMAUnavailable.verb("ibv_query_port") }
        guard pa.state == IBV_PORT_ACTIVE else { throw RDMAUnavailable("port \(portNum) of \(deviceName) is not active") }
        mtu = 128 << Int(pa.active_mtu.rawValue)
        try createQueues()
        guard rdma_create_qp(id, pd, &qpInit) == 0, let qp = id.pointee.qp else { throw RDMAUnavailable.verb("rdma_create_qp") }
        self.qp = qp
        qpn = qp.pointee.qp_num
        var attr = ibv_qp_attr()
        var initAttr = ibv_qp_init_attr()
        guard ibv_query_qp(qp, &attr, Int32(IBV_QP_QKEY.rawValue), &initAttr) == 0 else { throw RDMAUnavailable.verb("ibv_query_qp") }
        qkey = attr.qkey
        try registerAndPost()

        groupAddr = Self.socketAddress(group, scope: i.index)
        let jrc = withUnsafeMutablePointer(to: &groupAddr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { rdma_join_multicast(id, $0, nil) }
        }
        guard jrc == 0 else { throw RDMAUnavailable.verb("rdma_join_multicast \(group)") }
        try awaitJoin(group)

        var g = ibv_gid()
        guard ibv_query_gid(verbs, portNum, Int32(sgidIndex), &g) == 0 else { throw RDMAUnavailable.verb("ibv_query_gid") }
        gid = withUnsafeBytes(of: g.raw) { Array($0) }
        try makeNonBlocking()
    }

    /// Waits (bounded) for the join's answer; keeps the group's address handle, QPN and Q_Key.
    private func awaitJoin(_ group: IPAddress) throws {
        guard let channel else { return }
        let deadline = NodeDriver.now() + .milliseconds(UInt64(RDMATransport.joinTimeoutMillis))
        while NodeDriver.now() < deadline {
            var pfd = pollfd(fd: cmFD, events: Int16(POLLIN), revents: 0)
            let n = poll(&pfd, 1, Int32(max(1, (deadline - NodeDriver.now()).nanos / 1_000_000)))
            guard n > 0 else { continue }
            var ev: UnsafeMutablePointer<rdma_cm_event>?
            guard rdma_get_cm_event(channel, &ev) == 0, let ev else { throw RDMAUnavailable.verb("rdma_get_cm_event") }
            let type = ev.pointee.event
            if type == RDMA_CM_EVENT_MULTICAST_JOIN {
                var ud = ev.pointee.param.ud
                groupQPN = ud.qp_num
                groupQKey = ud.qkey
                sgidIndex = ud.ah_attr.grh.sgid_index
                let ah = ibv_create_ah(pd, &ud.ah_attr)
                rdma_ack_cm_event(ev)
                joined = true
                guard let ah else { throw RDMAUnavailable.verb("ibv_create_ah (group)") }
                groupAH = ah
                return
            }
            let status = ev.pointee.status
            rdma_ack_cm_event(ev)
            if type == RDMA_CM_EVENT_MULTICAST_ERROR {
                throw RDMAUnavailable("joining \(group) on \(deviceName) failed (status \(status))")
            }
        }
        throw RDMAUnavailable("joining \(group) on \(deviceName) timed out")
    }

    /// Everything, in the order the verbs require (AHs and QP before the PD, CQs after the QP,
    /// the ID before its channel, our device context last). Safe on a partly set-up endpoint.
    func destroy() {
        if joined, let id {
            withUnsafeMutablePointer(to: &groupAddr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = rdma_leave_multicast(id, $0) }
            }
        }
        joined = false
        if attached { _ = ibv_detach_mcast(qp, &groupGID, 0) }
        attached = false
        for h in handles.values { ibv_destroy_ah(h) }
        handles.removeAll()
        if let g = groupAH { ibv_destroy_ah(g) }
        groupAH = nil
        if qp != nil {
            if mode == .cm, let id { rdma_destroy_qp(id) } else { ibv_destroy_qp(qp) }
        }
        qp = nil
        if let mr { ibv_dereg_mr(mr) }
        mr = nil
        if let sendCQ { ibv_destroy_cq(sendCQ) }
        sendCQ = nil
        if let recvCQ { ibv_destroy_cq(recvCQ) }
        recvCQ = nil
        if let compChannel { ibv_destroy_comp_channel(compChannel) }
        compChannel = nil
        if let pd { ibv_dealloc_pd(pd) }
        pd = nil
        if let channel {
            // Events not yet taken must be acknowledged before the ID goes.
            _ = fcntl(channel.pointee.fd, F_SETFL, fcntl(channel.pointee.fd, F_GETFL) | O_NONBLOCK)
            for _ in 0..<64 {
                var ev: UnsafeMutablePointer<rdma_cm_event>?
                guard rdma_get_cm_event(channel, &ev) == 0, let ev else { break }
                rdma_ack_cm_event(ev)
            }
            if let id { rdma_destroy_id(id) }
            rdma_destroy_event_channel(channel)
        }
        id = nil
        channel = nil
        if mode == .roce, let context { ibv_close_device(context) }
        context = nil
        if let buffer { free(buffer) }
        buffer = nil
    }

    static func socketAddress(_ a: IPAddress, scope: Int) -> sockaddr_storage {
        var ss = sockaddr_storage()
        if a.isIPv4 {
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    sin.pointee.sin_family = sa_family_t(AF_INET)
                    sin.pointee.sin_addr.s_addr = a.v4Value.bigEndian
                }
            }
        } else {
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    sin6.pointee.sin6_family = sa_family_t(AF_INET6)
                    let b = a.bytes16
                    withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { raw in for k in 0..<16 { raw[k] = b[k] } }
                    if a.isLinkLocalV6 || a.isMulticast { sin6.pointee.sin6_scope_id = UInt32(scope) }
                }
            }
        }
        return ss
    }
}

extension TransportCounters {
    /// The counters of one snapshot of the RDMA transport's state (the status file reads one
    /// snapshot for both its totals and its rdma section, so that the two agree).
    init(_ s: RDMAStatus) {
        self.init()
        datagramsRx = s.datagramsRx + s.immediateRx
        datagramsTx = s.datagramsTx
        multicastTx = s.multicastTx
        unicastTx = s.unicastTx
        sendErrors = s.sendErrors
    }
}
