import Auth
import Cluster
import NIOCore
import NodeMap
import Wire

/// Runs one `ClusterNode` on one event loop: feeds it the transports' datagrams and its timer,
/// carries out its effects through the transports, hands the map to the publisher when it changed
/// and renders its events. Everything here happens on `loop`.
final class NodeDriver: @unchecked Sendable {
    let loop: EventLoop
    let sink: LogSink
    let transports: [any Transport]
    let publisher: MapPublisher
    private(set) var node: ClusterNode
    private var timer: Scheduled<Void>?
    private var timerDeadline: Instant = .distantFuture
    private var statusTimer: RepeatedTask?
    private var publishedGeneration: UInt64 = .max
    private var stopped = false
    /// With two transports the same datagram can arrive twice: each is handled once.
    private var recent = RecentSet<UInt64>(capacity: 4096)
    private(set) var duplicatesAcrossTransports = 0
    /// The link each IPv6 link-local origin was last heard on (kept only with several links: with
    /// one, every link-local address is on it).
    private var links: [IPAddress: Int] = [:]
    private let multiLink: Bool
    /// The event stream (control socket subscribers); nil when not served.
    var hub: EventHub?
    /// The kernel modules' link (exits from /dev/heartbeat, the map into fdmod).
    var kernel: KernelLink?
    /// Processes watched through pidfds (for the status file).
    var watcher: ProcessWatcher?
    /// `--allow-from`: sources outside it are dropped before the node sees anything.
    var allowList: SourceAllowList?

    init(loop: EventLoop, node: ClusterNode, transports: [any Transport], publisher: MapPublisher, sink: LogSink) {
        self.loop = loop
        self.node = node
        self.transports = transports
        self.publisher = publisher
        self.sink = sink
        self.multiLink = transports.contains { ($0 as? UDPTransport).map { $0.interfaces.count > 1 } ?? false }
        self.node.eventLevel = sink.level
        for t in transports {
            if let u = t as? UDPTransport { u.linkOf = { [unowned self] a in self.links[a] } }
            if let r = t as? RDMATransport {
                r.peerEndpoint = { [unowned self] a in
                    self.node.map[a]?.capabilities.first { if case .rdma = $0 { true } else { false } }
                }
                r.endpointChanged = { [unowned self] cap in self.endpointChanged(cap) }
            }
        }
    }

    /// The RDMA endpoint came up (or moved, or went away): our map entry and an announce follow.
    private func endpointChanged(_ cap: Capability?) {
        guard !stopped else { return }
        perform(node.capabilitiesChanged(cap.map { [$0] } ?? [], now: Self.now()))
        afterInput()
    }

    /// CLOCK_MONOTONIC (NIO's uptime clock): the cores' time.
    static func now() -> Instant { Instant(nanos: NIODeadline.now().uptimeNanoseconds) }

    func start() async throws {
        for t in transports {
            // The UDP transport reads on this loop: no hop (a closure per datagram counts in a flood).
            try await t.start { d in
                if self.loop.inEventLoop { self.received(d) } else { self.loop.execute { self.received(d) } }
            }
        }
        try await loop.submit {
            self.perform(self.node.start(now: Self.now()))
            self.afterInput()
            self.statusTimer = self.loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                self.publisher.status(self.statusJSON())
            }
        }.get()
    }

    /// Leave, final map and status, close the transports.
    func stop() async {
        let (map, status) = try! await loop.submit { () -> (NodeMap, String) in
            self.stopped = true
            self.timer?.cancel()
            self.statusTimer?.cancel()
            self.perform(self.node.stop(now: Self.now()))
            return (self.node.map, self.statusJSON())
        }.get()
        // Give the leave a moment to be written before the sockets close.
        try? await Task.sleep(for: .milliseconds(50))
        await publisher.final(map: map, selfAddress: node.address, status: status)
        for t in transports { await t.close() }
        sink.write(DaemonEvent.stopped(incarnation: node.incarnation))
    }

    /// A watched process exited (on the loop): the node tells the cluster.
    func processExited(_ w: ProcessWatcher.Watch, status: Int32) {
        guard !stopped else { return }
        perform(node.processExited(pid: UInt32(w.pid), startTime: w.startTime, status: status, tag: w.tag, name: w.name, now: Self.now()))
        afterInput()
    }

    /// A process opted in through the kernel module exited (on the loop): told like a watched one.
    func kernelExited(_ e: KernelLink.Exit, name: String) {
        guard !stopped else { return }
        perform(
            node.processExited(
                pid: e.pid, startTime: e.startTicks, status: e.status, tag: e.tag, source: .kernel, name: name, now: Self.now()))
        afterInput()
    }

    func setKeyring(_ ring: Keyring) {
        loop.execute { self.node.setKeyring(ring) }
    }

    func setDebug(_ on: Bool) {
        loop.execute { self.node.eventLevel = on ? .debug : .info }
    }

    func interfacesChanged(_ aliases: [Alias]) {
        loop.execute {
            guard !self.stopped else { return }
            self.perform(self.node.interfacesChanged(aliases: aliases, now: Self.now()))
            self.afterInput()
        }
    }

    func received(_ d: Datagram) {
        guard !stopped else { return }
        if let allow = allowList, let src = d.source, !allow.contains(src) {
            node.refused(.notAllowed, from: src)
            return
        }
        if let imm = d.immediate {
            perform(node.receiveImmediate(imm, now: Self.now()))
            afterInput()
            return
        }
        if transports.count > 1 {
            var h: UInt64 = 0xCBF2_9CE4_8422_2325
            for b in d.bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
            guard recent.insert(h) else {
                duplicatesAcrossTransports += 1
                return
            }
        }
        perform(node.receive(d.bytes, interface: d.link, now: Self.now()))
        if multiLink { noteLink(of: d) }
        afterInput()
    }

    /// Remembers the link a link-local node was heard on. Only origins the map holds (so a flood of
    /// forged origins cannot grow this), pruned to the map's nodes when it outgrows them.
    private func noteLink(of d: Datagram) {
        guard let origin = Message.peekOrigin(d.bytes), origin.isLinkLocalV6, node.map.contains(origin) else { return }
        links[origin] = d.link
        if links.count > 2 * max(node.map.count, 16) {
            links = links.filter { node.map.contains($0.key) }
        }
    }

    private func fire() {
        guard !stopped else { return }
        timerDeadline = .distantFuture
        let now = Self.now()
        noteSocketDrops(now: now)
        perform(node.tick(now: now))
        afterInput()
    }

    /// The kernel's count of datagrams our receive sockets dropped, at the last look.
    private var socketDrops: UInt64 = 0

    /// Before each tick: did our own sockets drop datagrams (their buffers overflowed)? Then the
    /// detector knows that a silence since may be ours.
    private func noteSocketDrops(now: Instant) {
        var total: UInt64 = 0
        for t in transports { total &+= t.receiveDrops() }
        if total > socketDrops { node.localLoss(dropped: Int(clamping: total - socketDrops), now: now) }
        socketDrops = total
    }

    /// Reschedules the timer; hands the map to the publisher when it changed (and only then).
    private func afterInput() {
        let now = Self.now()
        let next = min(node.nextDeadlineInPlace(), now + .seconds(1))
        if next < timerDeadline {
            timer?.cancel()
            timerDeadline = next
            timer = loop.scheduleTask(deadline: NIODeadline.uptimeNanoseconds(next.nanos)) { self.fire() }
        }
        if node.map.generation != publishedGeneration {
            publishedGeneration = node.map.generation
            publisher.map(node.map, selfAddress: node.address, at: now)
            kernel?.mapChanged(node.map, me: node.address)
        }
    }

    private func perform(_ effects: [Effect]) {
        for e in effects {
            switch e {
            case .multicast(let bytes, let except):
                for t in transports { t.multicast(bytes, except: except) }
            case .unicast(let bytes, let to):
                unicast(bytes, to: to, port: nil)
            case .heartbeat(let bytes, let to, let port):
                unicast(bytes, to: to, port: port)
            case .event(let ev):
                // Subscribers first: they wait for it; the log line can follow.
                hub?.publish(ev)
                sink.write(ev)
            }
        }
    }

    /// Over the first transport that reaches the node: RDMA where both ends have it, else IP.
    func unicast(_ bytes: [UInt8], to: IPAddress, port: UInt16?) {
        for t in unicastOrder where t.unicast(bytes, to: to, port: port) { return }
    }

    private lazy var unicastOrder: [any Transport] = transports.enumerated()
        .sorted { ($0.element.unicastRank, $0.offset) < ($1.element.unicastRank, $1.offset) }.map(\.element)

    /// The status file: typed counters as one JSON object.
    func statusJSON() -> String {
        let c = node.counters
        let d = node.discovery.stats
        let det = node.detector?.stats
        // One snapshot of the RDMA transport's state (its thread keeps counting): the totals and the
        // rdma section below must come from the same one, or they disagree by what arrived between.
        let rdmaStatus = transports.lazy.compactMap { $0 as? RDMATransport }.first?.status
        var t = TransportCounters()
        for x in transports {
            let k = x is RDMATransport ? rdmaStatus.map(TransportCounters.init) ?? x.counters : x.counters
            t.datagramsRx += k.datagramsRx
            t.datagramsTx += k.datagramsTx
            t.multicastTx += k.multicastTx
            t.unicastTx += k.unicastTx
            t.heartbeatsTx += k.heartbeatsTx
            t.heartbeatsRx += k.heartbeatsRx
            t.sendErrors += k.sendErrors
        }
        let drops: [(String, JSON.Value)] = DropReason.allCases.map { ($0.rawValue, .int(Int64(c.drops[$0] ?? 0))) }
        var f = EventFields()
        f.add("datagrams_rx", t.datagramsRx)
        f.add("datagrams_tx", t.datagramsTx)
        f.add("multicast_tx", t.multicastTx)
        f.add("unicast_tx", t.unicastTx)
        f.add("relayed_tx", d.relayed)
        f.add("duplicates", d.duplicates + duplicatesAcrossTransports)
        f.add("heartbeats_tx", t.heartbeatsTx)
        f.add("heartbeats_rx", t.heartbeatsRx)
        f.add("send_errors", t.sendErrors)
        f.add("members", node.map.memberCount)
        f.add("nodes", node.map.count)
        f.add("incarnation", node.incarnation)
        f.add("generation", node.map.generation)
        f.add("map_writes", publisher.writes)
        f.add("announces_tx", d.announcesSent)
        f.add("refutations", d.refutations)
        f.add("suspicions", det?.suspicions ?? 0)
        f.add("suspicions_answered", det?.suspicionsAnswered ?? 0)
        f.add("deaths_declared", det?.deathsDeclared ?? 0)
        f.add("deaths_learned", det?.deathsLearned ?? 0)
        f.add("late_ticks", det?.lateTicks ?? 0)
        f.add("late_heartbeats", det?.lateHeartbeats ?? 0)
        f.add("socket_drops", socketDrops)
        f.add("loss_graces", det?.lossGraces ?? 0)
        f.add("map_refused_full", node.map.refusedFull)
        var rdma = EventFields()
        if let rdmaStatus {
            rdmaStatus.fields(into: &rdma)
        } else {
            RDMAStatus(state: .off, reason: "--no-rdma").fields(into: &rdma)
        }
        var procs = EventFields()
        procs.add("watched", watcher?.count ?? 0)
        procs.add("exit_forwards_tx", c.exitForwardsSent)
        procs.add("duplicate_exit_notices", c.duplicateExitNotices)
        procs.add("paired_kernel_exits", c.pairedKernelExits)
        var kern = EventFields()
        if let k = kernel { k.fields(into: &kern) } else { KernelLink.offFields(into: &kern) }
        func object(_ f: EventFields) -> JSON.Value { .object(f.items.map { ($0.0, .scalar($0.1)) }) }
        return JSON.render(
            .object(
                f.items.map { ($0.0, .scalar($0.1)) } + [
                    ("drops", .object(drops)), ("rdma", object(rdma)), ("processes", object(procs)), ("kernel", object(kern)),
                ])) + "\n"
    }
}
