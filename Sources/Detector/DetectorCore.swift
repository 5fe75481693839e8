import Events
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
///
/// The mechanisms live in one file each: `Ring.swift` (who observes whom), `Observation.swift`
/// (heartbeats, deadlines, suspicion), `Probes.swift` (direct and indirect probes, helper relays),
/// `Deaths.swift` (declaring and spreading deaths, the binomial graph).
public struct DetectorCore: Sendable {
    // First, within `hotBytes`: what a map change (`skipsRing`) and `nextDeadlineInPlace` read, in
    // the order of their use (Swift lays a struct out in declaration order), so that a reader of
    // thousands of nodes in turn (the simulator hands each join to every node) can ask for these
    // lines alone. `orphans` is the first reference: it holds `DetectorCore?`'s nil tag (the first
    // field with the most spare bit patterns), which every `detector!` reads.
    /// Suspects we stopped observing (the ring moved): put back to alive at the next tick, since nobody
    /// else would ever clear them in this map.
    var orphans: [IPAddress] = []
    var nextHeartbeat: Instant
    var lastTick: Instant
    var deathBatchDue: Instant?
    var runDue: Instant?
    var runNextProbe: Instant = .zero
    var seenGeneration: UInt64?
    /// `NodeMap.changeTotal` when the ring was last brought up to date.
    var seenChangeTotal: UInt64 = 0
    /// Ring refreshes `mapChanged(_:changes:now:)` skipped (tests).
    var ringSkips = 0
    var selfID: NodeID?
    var successorID: NodeID?
    public let selfAddress: IPAddress
    var successorAddress: IPAddress?
    var observedNode: Observed?

    // The rest.
    public let settings: DetectorSettings
    /// `now` at creation: log lines are relative to it.
    public let startTime: Instant
    public internal(set) var stats = DetectorStats()
    /// Events below this level are not emitted (starts at `settings.eventLevel`; the shell lowers it
    /// when debug logging is switched on).
    public var eventLevel: LogLevel

    /// `helpers` first: it holds `Suspicion?`'s nil tag, which `nextDeadlineInPlace` and
    /// `skipsRing` read with the two times after it (`DetectorCore.hotBytes`).
    struct Suspicion: Sendable {
        var helpers: [IPAddress]
        var confirmBy: Instant
        var nextProbe: Instant
        var incarnation: UInt64
        var nonce: UInt32
        var since: Instant
        var rounds: Int
        /// Whether `lossGrace` was granted (once per suspicion).
        var graced = false
    }

    /// What `nextDeadlineInPlace` and `skipsRing` read first (`DetectorCore.hotBytes`).
    struct Observed: Sendable {
        var address: IPAddress
        var id: NodeID
        var deadline: Instant
        var nextWatch: Instant
        var suspicion: Suspicion?
        var since: Instant
        var lastHeard: Instant?
    }

    struct Watcher: Sendable {
        var address: IPAddress
        var at: Instant
    }

    struct Relay: Sendable {
        var target: IPAddress
        var nonce: UInt32
        var requester: IPAddress
        var expires: Instant
    }

    /// The last suspicion of this node answered with a heartbeat (`answerSuspicion`).
    struct Answered: Sendable {
        var accuser: IPAddress
        var at: Instant
    }

    struct DeadKey: Hashable, Sendable {
        var target: IPAddress
        var incarnation: UInt64
    }

    /// Bounds of the helper-relay table, the watcher list and the dead-notice dedupe cache.
    public static let maxRelays = 256
    public static let maxWatchers = 16
    public static let deadCacheSize = 1024
    /// Death notices learned within this time of the last one spread wait and go together (a
    /// `deaths` datagram of up to `Wire.deathsPerDatagram`); a lone death goes at once.
    public static let deathBatchWindow = TimeSpan.milliseconds(100)

    var watchers: [Watcher] = []
    var relays: [Relay] = []
    var answered: Answered?
    /// Death notices waiting to be spread (`spread`), when they go, and when the last went.
    var deathBatch: [DeathNotice] = []
    var lastDeathSpread: Instant?
    var deadSeen = RecentSet<DeadKey>(capacity: DetectorCore.deadCacheSize)
    /// When the shell last reported drops at this node's own receive sockets (`localLoss`).
    var lastLocalLoss: Instant?
    /// The silent run being probed (`Run.swift`): its members in ring order (nearest first), when
    /// probing began, when the verdict is due (nil: no run), the next round, the helpers.
    var run: [RunMember] = []
    var runSince: Instant = .zero
    var runGraced = false
    var runRounds = 0
    var runHelpers: [IPAddress] = []
    var sequence: UInt32 = 0
    var nonceCounter: UInt32

    /// The bytes from the start of the core that a map change and `nextDeadlineInPlace` read.
    public static let hotBytes =
        MemoryLayout<DetectorCore>.offset(of: \DetectorCore.observedNode)! + MemoryLayout<Observed>.offset(of: \Observed.suspicion)!
        + MemoryLayout<Suspicion>.offset(of: \Suspicion.nextProbe)! + MemoryLayout<Instant>.size

    public init(settings: DetectorSettings, selfAddress: IPAddress, now: Instant) {
        precondition((try? settings.validate()) != nil, "invalid DetectorSettings: build them with init(...) throws")
        self.settings = settings
        self.selfAddress = selfAddress
        self.startTime = now
        self.eventLevel = settings.eventLevel
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
    public var observedDeadline: Instant? { observedNode?.suspicion == nil ? observedNode?.deadline : nil }
    /// Nodes that asked for heartbeats with `.watch` (besides the successor), most recent last.
    public var watcherAddresses: [IPAddress] { watchers.map(\.address) }

    /// `nextDeadline` for a core held in an optional or a class property: a mutating call reads it in
    /// place. The computation lives here, not in the getter: a non-mutating call on a struct this large
    /// is handed a copy of it (a `memcpy` of the whole core for every call, seen in the simulator).
    public mutating func nextDeadlineInPlace() -> Instant {
        var d = nextHeartbeat
        if !orphans.isEmpty { d = min(d, lastTick) }
        if let b = deathBatchDue { d = min(d, b) }
        if let r = runDue { d = min(d, min(r, runNextProbe)) }
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

    /// The earliest time `tick` must be called next (at the latest one period after the last tick).
    public var nextDeadline: Instant {
        var copy = self
        return copy.nextDeadlineInPlace()
    }

    // MARK: Entry points

    /// The map changed (a node came, went, changed ID or state): re-pick the observed and observer.
    /// Calling it is optional: `tick` and `receive` notice a new map generation themselves.
    public mutating func mapChanged(_ map: NodeMap, now: Instant) -> [DetectorOutput] {
        var out: [DetectorOutput] = []
        refreshRing(map, now: now, out: &out)
        return out
    }

    /// The map changed by `changes`. When these are the only changes since the ring was last brought
    /// up to date and none can move it (none concerns this node, its predecessor or successor, or
    /// an ID between them; no suspicion is open), bringing it up to date would change nothing, and
    /// is skipped: in a start storm every node hears of every other, and only a few of those
    /// arrivals land next to it on the ring.
    public mutating func mapChanged(_ map: NodeMap, changes: [NodeMapChange], now: Instant) -> [DetectorOutput] {
        if skipsRing(changes, changeTotal: map.changeTotal, generation: map.generation) { return [] }
        return mapChanged(map, now: now)
    }

    /// The test of `mapChanged(_:changes:now:)` alone, from the two counters of the map it reads:
    /// true (and the changes taken as seen) when the ring cannot have moved; false when the caller
    /// must call `mapChanged(_:now:)`. For a caller that holds the map beside this core, where
    /// handing the map over copies it (`ClusterNode`, at each of a restart storm's map changes).
    public mutating func skipsRing(_ changes: [NodeMapChange], changeTotal: UInt64, generation: UInt64) -> Bool {
        guard seenGeneration != nil, seenChangeTotal &+ UInt64(changes.count) == changeTotal, ringUnmoved(by: changes)
        else { return false }
        seenGeneration = generation
        seenChangeTotal = changeTotal
        ringSkips += 1
        return true
    }

    /// Inlined: called from the mutating `skipsRing` (every map change of a restart storm), a
    /// non-mutating method of this struct (over 700 bytes) was handed a copy of all of it.
    @inline(__always)
    private func ringUnmoved(by changes: [NodeMapChange]) -> Bool {
        guard let me = selfID, let o = observedNode, o.suspicion == nil, let q = successorID, let qa = successorAddress,
            o.id != q
        else { return false }
        // The arc from the predecessor through us to the successor, ends included.
        func onArc(_ id: NodeID) -> Bool {
            let v = id.rawValue
            return o.id.rawValue <= q.rawValue ? (v >= o.id.rawValue && v <= q.rawValue) : (v >= o.id.rawValue || v <= q.rawValue)
        }
        func near(_ a: IPAddress, _ id: NodeID) -> Bool {
            a == selfAddress || a == o.address || a == qa || id == me || onArc(id)
        }
        for c in changes {
            switch c {
            case .added(let n), .removed(let n), .updated(let n):
                if near(n.address, n.id) { return false }
            case .stateChanged(let a, let id, _, _, _):
                if near(a, id) { return false }
            case .idChanged, .collision:
                return false
            }
        }
        return true
    }

    /// Timers: heartbeats due, the observed node's deadline, probe rounds, the confirm window.
    public mutating func tick(now: Instant, map: inout NodeMap) -> [DetectorOutput] {
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
                    if let r = runDue { runDue = max(r + pause, floor) }
                    observedNode = o
                    emit(&out, .lateTick(
                        pause: pause, gap: gap, period: settings.period, observing: o.address,
                        graceLeft: (o.suspicion?.confirmBy ?? o.deadline) - now))
                } else {
                    emit(&out, .lateTick(pause: pause, gap: gap, period: settings.period, observing: nil, graceLeft: nil))
                }
            }
            lastTick = now
        }

        if now >= nextHeartbeat { sendHeartbeats(now: now, map: map, out: &out) }
        if let b = deathBatchDue, now >= b { flushDeaths(now: now, map: map, out: &out) }
        if !late {
            checkObserved(now: now, map: &map, out: &out)
            checkRun(now: now, map: &map, out: &out)
        }
        return out
    }

    /// This node's own receive sockets dropped `dropped` datagrams (the kernel's count rose) by `now`:
    /// heartbeats and probe answers missed since then may be our loss, not the sender's silence.
    /// A suspect whose confirm window ends after such a loss gets `lossGrace` more (once).
    public mutating func localLoss(dropped: Int, now: Instant) {
        guard dropped > 0 else { return }
        stats.localDrops += dropped
        lastLocalLoss = now
    }

    /// A detector message from `origin` (its primary address and incarnation from the header).
    /// The shell has already touched `origin` in the map.
    public mutating func receive(
        _ body: Body, from origin: IPAddress, originIncarnation: UInt64, now: Instant, map: inout NodeMap
    ) -> [DetectorOutput] {
        var out: [DetectorOutput] = []
        prepare(&map, now: now, out: &out)
        let stale = (map.brief(origin)?.incarnation ?? 0) > originIncarnation

        // Any detector message from the observed node, of its current incarnation, is a sign of life.
        if !stale, origin == observedNode?.address {
            signOfLife(now: now, map: &map, out: &out, reason: .message(body.type))
        }
        if !stale, runDue != nil { runHeard(origin) }

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
                emit(&out, .watchedBy(address: origin))
                // Answer a new observer at once so that its deadline starts from a heartbeat.
                stats.heartbeatsSent += send(heartbeatBody(map), to: origin, map: map, out: &out) ? 1 : 0
            }

        case .probeRequest(let target, _, let nonce):
            helperProbe(target: target, nonce: nonce, requester: origin, now: now, map: map, out: &out)

        case .probe(let requester, let nonce):
            // Answer the sender: the requester itself (direct probe) or a helper, which forwards.
            answerProbe(nonce: nonce, to: origin, map: map, out: &out)
            stillSuspected(by: requester, now: now, map: map, out: &out)

        case .probeAck(let target, let targetIncarnation, let nonce):
            probeAnswered(
                target: target, targetIncarnation: targetIncarnation, nonce: nonce, from: origin, body: body, now: now,
                map: &map, out: &out)

        case .suspect(let target, let incarnation):
            guard target == selfAddress else { break }
            let own = ownIncarnation(map)
            if incarnation > own {
                // It knows a life of ours above this one (a restart whose clock went back): refute past it.
                accused(.suspect, by: origin, incarnation: incarnation, now: now, out: &out)
            } else if incarnation == own {
                answerSuspicion(of: origin, now: now, map: map, out: &out)
            }

        case .dead(let target, let incarnation, let targetID):
            receiveDead(
                target: target, incarnation: incarnation, targetID: targetID, from: origin, now: now, map: &map,
                out: &out)

        case .deaths(let notices):
            for n in notices {
                receiveDead(
                    target: n.target, incarnation: n.targetIncarnation, targetID: n.targetID, from: origin, now: now,
                    map: &map, out: &out)
            }

        case .announce, .join, .leave, .mapSync, .processExit, .syncRequest, .syncEntries, .offer:
            break
        }
        return out
    }
}
