import NodeMap
import Wire

/// The ring failure detector of one node, after Open MPI ULFM's `comm_ft_detector.c` with SWIM /
/// Lifeguard's indirect probes (docs/DETECTOR.md).
///
/// Members (alive or suspect nodes of the map) form a ring ordered by assigned ID. Each node
/// *observes* its predecessor and is *observed* by its successor: it sends a heartbeat every η to its
/// successor (and to whoever sent it `.watch` recently) and expects one from its predecessor within δ.
/// A silent predecessor becomes suspect and is probed directly and through k helpers for the confirm
/// window; then it is declared dead and the death is spread by multicast and along a circulant
/// (binomial) graph, each node forwarding the first notice it sees.
///
/// Pure: no sockets, no sleeps, no clock. Time is `now`, in nanoseconds of the caller's monotonic
/// clock (the same clock as the map's `lastHeard`). Every entry point returns `DetectorOutput`s for the
/// shell to carry out. Per tick the work is O(1) plus the few watchers; ring changes cost a couple of
/// bitmap scans; only a death costs O(N) (the circulant graph needs this node's rank).
public struct DetectorCore: Sendable {
    public let settings: DetectorSettings
    public let selfAddress: IPAddress
    /// `now` at creation: log lines are relative to it.
    public let startTime: UInt64
    public private(set) var stats = DetectorStats()

    struct Suspicion: Sendable {
        var incarnation: UInt64
        var nonce: UInt32
        var since: UInt64
        var confirmBy: UInt64
        var nextProbe: UInt64
        var helpers: [IPAddress]
        var rounds: Int
    }

    struct Observed: Sendable {
        var address: IPAddress
        var id: NodeID
        var since: UInt64
        var deadline: UInt64
        var nextWatch: UInt64
        var lastHeard: UInt64?
        var suspicion: Suspicion?
    }

    struct Watcher: Sendable {
        var address: IPAddress
        var at: UInt64
    }

    struct Relay: Sendable {
        var target: IPAddress
        var nonce: UInt32
        var requester: IPAddress
        var expires: UInt64
    }

    struct DeadKey: Hashable, Sendable {
        var target: IPAddress
        var incarnation: UInt64
    }

    /// Bounds of the helper-relay table, the watcher list and the dead-notice dedupe cache.
    public static let maxRelays = 256
    public static let maxWatchers = 16
    public static let deadCacheSize = 1024

    private var selfID: NodeID?
    private var observedNode: Observed?
    private var successorAddress: IPAddress?
    private var watchers: [Watcher] = []
    private var relays: [Relay] = []
    private var deadSeen = RecentSet<DeadKey>(capacity: DetectorCore.deadCacheSize)
    /// Suspects we stopped observing (the ring moved): put back to alive at the next tick, since nobody
    /// else would ever clear them in this map.
    private var orphans: [IPAddress] = []
    private var seenGeneration: UInt64?
    private var lastTick: UInt64
    private var nextHeartbeat: UInt64
    private var sequence: UInt32 = 0
    private var nonceCounter: UInt32

    public init(settings: DetectorSettings, selfAddress: IPAddress, now: UInt64) {
        precondition((try? settings.validate()) != nil, "invalid DetectorSettings: build them with init(...) throws")
        self.settings = settings
        self.selfAddress = selfAddress
        self.startTime = now
        self.lastTick = now
        self.nextHeartbeat = now
        // Nonces of different nodes start far apart so that relays rarely see two equal ones.
        var x = selfAddress.lo ^ selfAddress.hi &* 0x9E37_79B9_7F4A_7C15
        x ^= x >> 29
        x &*= 0xBF58_476D_1CE4_E5B9
        self.nonceCounter = UInt32(truncatingIfNeeded: x >> 32)
    }

    // MARK: Reading

    /// The node this one observes (its ring predecessor), if any.
    public var observed: IPAddress? { observedNode?.address }
    /// The node that observes this one (its ring successor), which gets our heartbeats.
    public var observer: IPAddress? { successorAddress }
    /// Whether the observed node is currently suspected.
    public var isSuspecting: Bool { observedNode?.suspicion != nil }
    /// When the observed node's next heartbeat is due at the latest (nil while suspecting or not observing).
    public var observedDeadline: UInt64? { observedNode?.suspicion == nil ? observedNode?.deadline : nil }
    /// Nodes that asked for heartbeats with `.watch` (besides the successor), most recent last.
    public var watcherAddresses: [IPAddress] { watchers.map(\.address) }

    /// The earliest time `tick` must be called next (at the latest one period after the last tick).
    public var nextDeadline: UInt64 {
        var d = nextHeartbeat
        if !orphans.isEmpty { d = min(d, lastTick) }
        if let o = observedNode {
            d = min(d, o.nextWatch)
            if let s = o.suspicion {
                d = min(d, min(s.nextProbe, s.confirmBy))
            } else {
                d = min(d, o.deadline)
            }
        }
        return d
    }

    // MARK: Entry points

    /// The map changed (a node came, went, changed ID or state): re-pick the observed and observer.
    /// Calling it is optional: `tick` and `receive` notice a new map generation themselves.
    public mutating func mapChanged(_ map: NodeMap, now: UInt64) -> [DetectorOutput] {
        var out: [DetectorOutput] = []
        refreshRing(map, now: now, out: &out)
        return out
    }

    /// Timers: heartbeats due, the observed node's deadline, probe rounds, the confirm window.
    public mutating func tick(now: UInt64, map: inout NodeMap) -> [DetectorOutput] {
        var out: [DetectorOutput] = []
        prepare(&map, now: now, out: &out)

        // A late tick means this process was paused: whatever we did not hear meanwhile may be
        // sitting in the socket buffer. Do not suspect on this tick; extend the deadline by the pause.
        var late = false
        if now > lastTick {
            let gap = now - lastTick
            if gap > settings.period + settings.driftTolerance {
                late = true
                let pause = gap - settings.period
                stats.lateTicks += 1
                if var o = observedNode {
                    let floor = now + settings.period
                    o.deadline = max(o.deadline + pause, floor)
                    if var s = o.suspicion {
                        s.confirmBy = max(s.confirmBy + pause, floor)
                        o.suspicion = s
                    }
                    observedNode = o
                    log(&out, .warning, now) {
                        "tick late by \(formatMillis(pause)) (\(formatMillis(gap)) since the previous tick, period "
                            + "\(formatMillis(settings.period))): process paused? not suspecting \(o.address) on this "
                            + "tick; its deadline extended by \(formatMillis(pause)), grace left "
                            + "\(formatMillis((o.suspicion?.confirmBy ?? o.deadline) - now))"
                    }
                } else {
                    log(&out, .warning, now) {
                        "tick late by \(formatMillis(pause)) (\(formatMillis(gap)) since the previous tick): process paused?"
                    }
                }
            }
            lastTick = now
        }

        if now >= nextHeartbeat { sendHeartbeats(now: now, map: map, out: &out) }
        if !late { checkObserved(now: now, map: &map, out: &out) }
        return out
    }

    /// A detector message from `origin` (its primary address and incarnation from the header).
    /// The shell has already touched `origin` in the map.
    public mutating func receive(
        _ body: Body, from origin: IPAddress, originIncarnation: UInt64, now: UInt64, map: inout NodeMap
    ) -> [DetectorOutput] {
        var out: [DetectorOutput] = []
        prepare(&map, now: now, out: &out)
        let stale = (map[origin]?.incarnation ?? 0) > originIncarnation

        // Any detector message from the observed node, of its current incarnation, is a sign of life.
        if !stale, origin == observedNode?.address {
            signOfLife(now: now, map: &map, out: &out, reason: "\(body.type) from it")
        }

        switch body {
        case .heartbeat:
            stats.heartbeatsReceived += 1

        case .watch:
            stats.watchesReceived += 1
            guard origin != selfAddress else { break }
            if let i = watchers.firstIndex(where: { $0.address == origin }) {
                watchers[i].at = now
            } else {
                if watchers.count >= Self.maxWatchers { watchers.removeFirst() }
                watchers.append(Watcher(address: origin, at: now))
                log(&out, .debug, now) { "\(origin) watches this node: sending it heartbeats" }
                // Answer a new observer at once so that its deadline starts from a heartbeat.
                stats.heartbeatsSent += send(heartbeatBody(), to: origin, map: map, out: &out) ? 1 : 0
            }

        case .probeRequest(let target, _, let nonce):
            if target == selfAddress {
                answerProbe(nonce: nonce, to: origin, map: map, out: &out)
                break
            }
            addRelay(Relay(target: target, nonce: nonce, requester: origin, expires: now + settings.confirmWindow), now: now)
            if send(.probe(requester: origin, nonce: nonce), to: target, map: map, out: &out) {
                stats.probesRelayed += 1
            }

        case .probe(_, let nonce):
            // Answer the sender: the requester itself (direct probe) or a helper, which forwards.
            answerProbe(nonce: nonce, to: origin, map: map, out: &out)

        case .probeAck(let target, let targetIncarnation, let nonce):
            if let o = observedNode, o.address == target, let s = o.suspicion, s.nonce == nonce,
                targetIncarnation >= s.incarnation
            {
                let via = origin == target ? "direct probe" : "helper \(origin)"
                signOfLife(now: now, map: &map, out: &out, reason: "probe answered through \(via)")
            }
            var forwarded = false
            var i = 0
            while i < relays.count {
                let r = relays[i]
                if r.target == target, r.nonce == nonce, r.expires >= now {
                    if r.requester != selfAddress,
                        send(body, to: r.requester, map: map, out: &out)
                    {
                        stats.probeAcksRelayed += 1
                        forwarded = true
                    }
                    relays.remove(at: i)
                } else {
                    i += 1
                }
            }
            if forwarded {
                log(&out, .debug, now) { "forwarded probe answer of \(target) (nonce \(nonce))" }
            }

        case .suspect(let target, let incarnation):
            if target == selfAddress, incarnation >= ownIncarnation(map) {
                stats.refutations += 1
                out.append(.refute)
                log(&out, .warning, now) {
                    "suspected by \(origin) at incarnation \(incarnation): refuting with a higher incarnation"
                }
            }

        case .dead(let target, let incarnation, let targetID):
            receiveDead(
                target: target, incarnation: incarnation, targetID: targetID, from: origin, now: now, map: &map,
                out: &out)

        case .announce, .join, .leave, .mapSync, .processExit:
            break
        }
        return out
    }

    // MARK: Ring

    /// Catch up with map changes the shell made, and clear suspects the ring moved away from.
    private mutating func prepare(_ map: inout NodeMap, now: UInt64, out: inout [DetectorOutput]) {
        if seenGeneration != map.generation { refreshRing(map, now: now, out: &out) }
        if !orphans.isEmpty {
            for a in orphans where map[a]?.state == .suspect {
                let c = map.setState(a, to: .alive)
                if !c.isEmpty {
                    out.append(.changes(c))
                    log(&out, .info, now) { "\(a) no longer observed by this node: suspicion withdrawn" }
                }
            }
            orphans.removeAll()
            seenGeneration = map.generation
        }
    }

    private mutating func refreshRing(_ map: NodeMap, now: UInt64, out: inout [DetectorOutput]) {
        seenGeneration = map.generation
        guard let me = map[selfAddress], me.state.isMember else {
            if let o = observedNode {
                log(&out, .info, now) { "this node is not a member of its map: stops observing \(o.address)" }
                if o.suspicion != nil { orphans.append(o.address) }
            }
            selfID = nil
            observedNode = nil
            successorAddress = nil
            return
        }
        selfID = me.id
        successorAddress = map.successor(of: me.id).flatMap { map.node(id: $0)?.address }
        let pred = map.predecessor(of: me.id).flatMap { map.node(id: $0) }

        if var o = observedNode, let p = pred, p.address == o.address {
            o.id = p.id
            // A higher incarnation (announce after a refutation) brought the suspect back in the map.
            if let s = o.suspicion, p.state == .alive || p.incarnation > s.incarnation {
                o.suspicion = nil
                o.deadline = now + settings.timeout
                stats.refutedSuspicions += 1
                log(&out, .info, now) {
                    "suspicion of \(p.address) cleared after \(formatMillis(now - s.since)): map shows it alive at "
                        + "incarnation \(p.incarnation)"
                }
            }
            observedNode = o
            return
        }

        // The predecessor changed. The old one left the ring (death, leave, removal): ring repair, the
        // new predecessor has been heartbeating someone all along, so no slack. The old one is still a
        // member: a new node came in between (or IDs moved): startup slack.
        let old = observedNode
        let repair: Bool
        if let o = old {
            let stillMember = map[o.address]?.state.isMember ?? false
            repair = !stillMember
            if stillMember, o.suspicion != nil { orphans.append(o.address) }
        } else {
            repair = false
        }
        guard let p = pred else {
            if let o = old { log(&out, .info, now) { "no other member: stops observing \(o.address)" } }
            observedNode = nil
            return
        }
        stats.ringChanges += 1
        let grace = repair ? settings.timeout : settings.startupGrace(memberCount: map.memberCount)
        observedNode = Observed(
            address: p.address, id: p.id, since: now, deadline: now + grace, nextWatch: now + settings.watchRefresh,
            lastHeard: nil, suspicion: nil)
        if send(.watch, to: p.address, map: map, out: &out) { stats.watchesSent += 1 }
        log(&out, .info, now) {
            let why =
                repair
                ? "ring repair (\(old!.address) left the ring)"
                : old == nil ? "start" : "new predecessor (was \(old!.address))"
            return "observing \(p.address) (id \(p.id)), \(why): first heartbeat due within \(formatMillis(grace)) "
                + "(\(map.memberCount) members)"
        }
    }

    // MARK: Heartbeats

    private func heartbeatBody() -> Body {
        .heartbeat(sequence: sequence, periodMillis: settings.periodMillis)
    }

    private mutating func sendHeartbeats(now: UInt64, map: NodeMap, out: inout [DetectorOutput]) {
        let lateness = now - nextHeartbeat
        if lateness > settings.period / 2, sequence > 0 {
            stats.lateHeartbeats += 1
            log(&out, .warning, now) {
                "missed send deadline by \(formatMillis(lateness)) (heartbeat \(sequence &+ 1), period "
                    + "\(formatMillis(settings.period))): our observer may suspect this node"
            }
        }
        sequence &+= 1
        let body = heartbeatBody()
        if let s = successorAddress, s != selfAddress {
            stats.heartbeatsSent += send(body, to: s, map: map, out: &out) ? 1 : 0
        }
        if !watchers.isEmpty {
            let life = settings.watchLifetime
            watchers.removeAll { now > $0.at + life }
            for w in watchers where w.address != successorAddress {
                stats.heartbeatsSent += send(body, to: w.address, map: map, out: &out) ? 1 : 0
            }
        }
        nextHeartbeat = now + settings.period
    }

    // MARK: Observing

    private mutating func signOfLife(now: UInt64, map: inout NodeMap, out: inout [DetectorOutput], reason: String) {
        guard var o = observedNode else { return }
        o.deadline = max(o.deadline, now + settings.timeout)
        o.lastHeard = now
        let s = o.suspicion
        o.suspicion = nil
        observedNode = o
        if let s {
            clearSuspicion(o.address, since: s.since, now: now, map: &map, out: &out, reason: reason)
        }
    }

    private mutating func clearSuspicion(
        _ address: IPAddress, since: UInt64, now: UInt64, map: inout NodeMap, out: inout [DetectorOutput],
        reason: String
    ) {
        stats.refutedSuspicions += 1
        if map[address]?.state == .suspect {
            let c = map.setState(address, to: .alive)
            if !c.isEmpty { out.append(.changes(c)) }
        }
        seenGeneration = map.generation
        log(&out, .info, now) { "suspicion of \(address) cleared after \(formatMillis(now - since)): \(reason)" }
    }

    private mutating func checkObserved(now: UInt64, map: inout NodeMap, out: inout [DetectorOutput]) {
        guard var o = observedNode else { return }
        if now >= o.nextWatch {
            if send(.watch, to: o.address, map: map, out: &out) { stats.watchesSent += 1 }
            o.nextWatch = now + settings.watchRefresh
            observedNode = o
        }
        guard let node = map[o.address] else { return }

        guard var s = o.suspicion else {
            guard now >= o.deadline else { return }
            // An announce (or any datagram the shell touched the node for) also counts.
            let heardBy = node.lastHeard + settings.timeout
            if heardBy > now {
                observedNode!.deadline = heardBy
                return
            }
            suspect(node, now: now, map: &map, out: &out)
            return
        }

        if node.state == .alive || node.incarnation > s.incarnation || node.lastHeard > s.since {
            observedNode!.suspicion = nil
            observedNode!.deadline = now + settings.timeout
            clearSuspicion(
                node.address, since: s.since, now: now, map: &map, out: &out,
                reason: node.lastHeard > s.since
                    ? "heard from it \(formatMillis(now - node.lastHeard)) ago"
                    : "map shows it alive at incarnation \(node.incarnation)")
            return
        }
        if now >= s.confirmBy {
            declareDead(node, suspicion: s, now: now, map: &map, out: &out)
            return
        }
        if now >= s.nextProbe {
            s.rounds += 1
            s.nextProbe = now + max(settings.period / 2, 1)
            observedNode!.suspicion = s
            probeRound(node.address, s, map: map, out: &out)
        }
    }

    private mutating func suspect(_ node: Node, now: UInt64, map: inout NodeMap, out: inout [DetectorOutput]) {
        let c = map.setState(node.address, to: .suspect, incarnation: node.incarnation)
        if !c.isEmpty { out.append(.changes(c)) }
        seenGeneration = map.generation
        stats.suspicions += 1
        nonceCounter &+= 1
        let s = Suspicion(
            incarnation: node.incarnation, nonce: nonceCounter, since: now, confirmBy: now + settings.confirmWindow,
            nextProbe: now + max(settings.period / 2, 1), helpers: helpers(excluding: node.address, map: map),
            rounds: 1)
        let o = observedNode!
        observedNode!.suspicion = s
        log(&out, .info, now) {
            let heard = o.lastHeard.map { "last heartbeat \(formatMillis(now - $0)) ago" } ?? "no heartbeat yet"
            return "suspect \(node.address) (id \(node.id), incarnation \(node.incarnation)): \(heard), deadline "
                + "passed by \(formatMillis(now - o.deadline)), observed for \(formatMillis(now - o.since)); probing "
                + "directly and through \(s.helpers.count) helper(s) for \(formatMillis(settings.confirmWindow))"
        }
        _ = send(.suspect(target: node.address, targetIncarnation: node.incarnation), to: node.address, map: map, out: &out)
        probeRound(node.address, s, map: map, out: &out)
    }

    private mutating func probeRound(_ target: IPAddress, _ s: Suspicion, map: NodeMap, out: inout [DetectorOutput]) {
        if send(.probe(requester: selfAddress, nonce: s.nonce), to: target, map: map, out: &out) {
            stats.probesSent += 1
        }
        let req = Body.probeRequest(target: target, targetIncarnation: s.incarnation, nonce: s.nonce)
        for h in s.helpers where send(req, to: h, map: map, out: &out) {
            stats.probeRequestsSent += 1
        }
    }

    /// The k members after this node on the ring, skipping `target`: deterministic, and (being near
    /// on the ring) likely on the same switch but not behind the same failed link as the target.
    func helpers(excluding target: IPAddress, map: NodeMap) -> [IPAddress] {
        let k = settings.confirmations
        guard k > 0, let me = selfID else { return [] }
        var out: [IPAddress] = []
        var cur = me
        var steps = 0
        while out.count < k, steps <= k {
            guard let next = map.successor(of: cur), next != me else { break }
            cur = next
            steps += 1
            if let n = map.node(id: next), n.address != target, n.address != selfAddress { out.append(n.address) }
        }
        return out
    }

    private mutating func answerProbe(nonce: UInt32, to origin: IPAddress, map: NodeMap, out: inout [DetectorOutput]) {
        let ack = Body.probeAck(target: selfAddress, targetIncarnation: ownIncarnation(map), nonce: nonce)
        if send(ack, to: origin, map: map, out: &out) { stats.probeAcksSent += 1 }
    }

    private mutating func addRelay(_ r: Relay, now: UInt64) {
        if relays.count >= Self.maxRelays {
            relays.removeAll { $0.expires < now }
            if relays.count >= Self.maxRelays { relays.removeFirst() }
        }
        relays.append(r)
    }

    // MARK: Deaths

    private mutating func declareDead(
        _ node: Node, suspicion s: Suspicion, now: UInt64, map: inout NodeMap, out: inout [DetectorOutput]
    ) {
        let c = map.setState(node.address, to: .dead, incarnation: s.incarnation)
        observedNode!.suspicion = nil
        guard !c.isEmpty else {
            // The map knows better (a higher incarnation, or it already left): start over.
            observedNode!.deadline = now + settings.timeout
            seenGeneration = map.generation
            log(&out, .info, now) { "not declaring \(node.address) dead: the map refused (state \(node.state))" }
            return
        }
        out.append(.changes(c))
        stats.deathsDeclared += 1
        remember(DeadKey(target: node.address, incarnation: s.incarnation))
        log(&out, .warning, now) {
            let heard = observedNode!.lastHeard.map { "last heartbeat \(formatMillis(now - $0)) ago" } ?? "never heard"
            return "declared \(node.address) (id \(node.id), incarnation \(s.incarnation)) dead: \(heard), suspected "
                + "\(formatMillis(now - s.since)) ago, \(s.rounds) probe round(s) through \(s.helpers.count) "
                + "helper(s) unanswered"
        }
        let notice = Body.dead(target: node.address, targetIncarnation: s.incarnation, targetID: node.id.rawValue)
        out.append(.multicast(notice))
        refreshRing(map, now: now, out: &out)
        for n in bmgNeighbours(in: map) where send(notice, to: n, map: map, out: &out) {
            stats.deadNoticesSent += 1
        }
    }

    private mutating func receiveDead(
        target: IPAddress, incarnation: UInt64, targetID: UInt16, from origin: IPAddress, now: UInt64,
        map: inout NodeMap, out: inout [DetectorOutput]
    ) {
        let key = DeadKey(target: target, incarnation: incarnation)
        guard !deadSeen.contains(key) else {
            stats.duplicateDeadNotices += 1
            return
        }
        remember(key)
        if target == selfAddress {
            // Never forward a notice of our own death: refute it.
            if incarnation >= ownIncarnation(map) {
                stats.refutations += 1
                out.append(.refute)
                log(&out, .warning, now) {
                    "declared dead by \(origin) at incarnation \(incarnation): refuting with a higher incarnation"
                }
            }
            return
        }
        if let n = map[target], n.incarnation > incarnation {
            log(&out, .debug, now) {
                "ignoring stale death notice for \(target) (incarnation \(incarnation) < \(n.incarnation))"
            }
            return
        }
        let c = map.setState(target, to: .dead, incarnation: incarnation)
        if !c.isEmpty {
            out.append(.changes(c))
            stats.deathsLearned += 1
            if observedNode?.address == target { observedNode!.suspicion = nil }
            log(&out, .info, now) {
                "learned from \(origin) that \(target) (id \(targetID), incarnation \(incarnation)) is dead"
            }
            refreshRing(map, now: now, out: &out)
        }
        let notice = Body.dead(target: target, targetIncarnation: incarnation, targetID: targetID)
        for n in bmgNeighbours(in: map) where n != origin && send(notice, to: n, map: map, out: &out) {
            stats.deadNoticesSent += 1
        }
    }

    private mutating func remember(_ key: DeadKey) {
        deadSeen.insert(key)
    }

    // MARK: Circulant (binomial) graph

    /// Ranks of the neighbours of `rank` among `count` members in ULFM's binomial graph:
    /// rank ± 2^i (mod count) for i in 0..<ceil(log2 count), without `rank` itself and without repeats.
    /// At most 2·ceil(log2 count) of them; the graph has diameter O(log count) and stays connected
    /// after any ceil(log2 count) − 1 failures.
    public static func bmgNeighbourRanks(of rank: Int, count: Int) -> [Int] {
        guard count > 1, (0..<count).contains(rank) else { return [] }
        var out: [Int] = []
        out.reserveCapacity(2 * ceilLog2(count))
        var step = 1
        while step < count {
            for r in [(rank + step) % count, (rank - step + count) % count] where r != rank && !out.contains(r) {
                out.append(r)
            }
            step <<= 1
        }
        return out
    }

    /// This node's neighbours in the binomial graph over the current members of `map` (dead and left
    /// nodes are not members, so they are skipped). O(N): used only when a death is spread.
    public func bmgNeighbours(in map: NodeMap) -> [IPAddress] {
        guard let me = map[selfAddress], me.state.isMember else { return [] }
        let ids = map.memberIDs()
        var lo = 0
        var hi = ids.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ids[mid] < me.id { lo = mid + 1 } else { hi = mid }
        }
        guard lo < ids.count, ids[lo] == me.id else { return [] }
        return Self.bmgNeighbourRanks(of: lo, count: ids.count).compactMap { map.node(id: ids[$0])?.address }
    }

    // MARK: Helpers

    private func ownIncarnation(_ map: NodeMap) -> UInt64 { map[selfAddress]?.incarnation ?? 0 }

    /// Appends a unicast to `to`'s heartbeat port; false (and counted) when the map has no port for it.
    private mutating func send(_ body: Body, to: IPAddress, map: NodeMap, out: inout [DetectorOutput]) -> Bool {
        guard to != selfAddress, let port = map[to]?.heartbeatPort, port != 0 else {
            stats.unroutable += 1
            return false
        }
        out.append(.send(body, to: to, port: port))
        return true
    }

    private func log(
        _ out: inout [DetectorOutput], _ level: DetectorLog.Level, _ now: UInt64, _ message: () -> String
    ) {
        guard level >= settings.logLevel else { return }
        out.append(.log(DetectorLog(level: level, sinceStart: now &- startTime, message: message())))
    }
}
