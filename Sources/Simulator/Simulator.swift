#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Cluster
import Detector
import Discovery
import NodeMap
import Wire

/// Life of one simulated node (its current process).
public enum SimNodeStatus: UInt8, Sendable {
    case notStarted, running, crashed, stopped
}

/// A fault or operator action the scenario applies at a virtual time.
public enum SimAction: Sendable, Equatable {
    /// The process dies: it stops receiving and ticking and says nothing.
    case crash(Int)
    /// A clean stop: the node says `leave`.
    case stop(Int)
    /// A crashed or stopped node starts again as a new process with a higher incarnation.
    case restart(Int)
    /// The process is paused for a duration: it neither receives nor ticks; its datagrams queue in
    /// its socket buffers (up to `SimConfig.socketBuffer`) and are read when it resumes.
    case pause(Int, UInt64)
    /// The network splits in two: datagrams between `side` and the other nodes are lost.
    case partition([Int])
    case heal
}

/// A departure (crash or clean stop) and when each survivor learned of it.
public struct Departure: Sendable {
    public enum Kind: String, Sendable { case crash, stop }
    public let kind: Kind
    public let node: Int
    public let address: IPAddress
    /// Incarnation of the departed process when it went.
    public let incarnation: UInt64
    public let time: UInt64
    /// Survivors (nodes running when it went and still running) that know: their map shows it dead,
    /// left, absent, or back with a higher incarnation.
    public fileprivate(set) var knownAt: [UInt64]
    public fileprivate(set) var survivors = 0
    public fileprivate(set) var pending = 0
    /// Survivors that never had it in their map as a member (nothing to learn).
    public fileprivate(set) var neverKnew = 0
    public fileprivate(set) var completedAt: UInt64?

    static let pendingMark = UInt64.max
    static let notSurvivor = UInt64.max - 1
    static let neverKnewMark = UInt64.max - 2

    /// Latency of each survivor that learned of it (not those that never knew the node), from the departure.
    public var latencies: [UInt64] {
        knownAt.compactMap { $0 >= Self.neverKnewMark ? nil : $0 - time }
    }
}

/// A live node marked dead by another node's map, at or above the incarnation of its running process.
public struct FalseDeath: Sendable, Equatable {
    public let time: UInt64
    public let target: Int
    public let incarnation: UInt64
    public let firstMarkedBy: Int
    /// The two were on different sides of a partition (the death is expected there).
    public let acrossPartition: Bool
    /// How the first marker came to it.
    public let cause: Cause

    public enum Cause: String, Sendable {
        /// Its detector declared it dead (confirm window ran out).
        case declared
        /// Discovery expiry: no announce or other datagram from it for `expiryFactor` intervals.
        case expired
        /// A death notice from another node.
        case learned
    }
}

/// Datagrams and bytes the simulated network carried.
public struct TrafficCounters: Sendable, Equatable {
    /// Datagrams sent (a multicast counts once, as on a LAN).
    public var sent = 0
    public var sentBytes = 0
    public var multicasts = 0
    public var unicasts = 0
    public var heartbeats = 0
    /// Copies handed to a node's `receive`.
    public var delivered = 0
    public var deliveredBytes = 0
    public var lost = 0
    public var duplicated = 0
    public var partitionDrops = 0
    /// Copies addressed to a node that is down (crashed, stopped, not yet started).
    public var toDownNode = 0
    /// Copies dropped because a paused node's socket buffer was full.
    public var bufferOverflows = 0
    /// Unicasts to an address no node has, or to a wrong port.
    public var unroutable = 0
    /// Datagrams sent, by message type (index = wire type byte).
    public var sentByType = [Int](repeating: 0, count: 16)
    public var sentBytesByType = [Int](repeating: 0, count: 16)

    public init() {}

    public static func - (a: TrafficCounters, b: TrafficCounters) -> TrafficCounters {
        var r = TrafficCounters()
        r.sent = a.sent - b.sent
        r.sentBytes = a.sentBytes - b.sentBytes
        r.multicasts = a.multicasts - b.multicasts
        r.unicasts = a.unicasts - b.unicasts
        r.heartbeats = a.heartbeats - b.heartbeats
        r.delivered = a.delivered - b.delivered
        r.deliveredBytes = a.deliveredBytes - b.deliveredBytes
        r.lost = a.lost - b.lost
        r.duplicated = a.duplicated - b.duplicated
        r.partitionDrops = a.partitionDrops - b.partitionDrops
        r.toDownNode = a.toDownNode - b.toDownNode
        r.bufferOverflows = a.bufferOverflows - b.bufferOverflows
        r.unroutable = a.unroutable - b.unroutable
        r.sentByType = zip(a.sentByType, b.sentByType).map { $0 - $1 }
        r.sentBytesByType = zip(a.sentBytesByType, b.sentBytesByType).map { $0 - $1 }
        return r
    }
}

/// A period of constant live set and the first time every live map equalled it.
public struct ConvergenceEpoch: Sendable {
    /// When the live set last changed (a start, crash, stop or restart).
    public let since: UInt64
    public var convergedAt: UInt64?
}

public struct SimProgress: Sendable {
    public let virtualTime: UInt64
    public let events: Int
    public let running: Int
    public let converged: Int
    public let wallSeconds: Double
}

/// Deterministic discrete-event simulator of a discd cluster on one LAN.
///
/// Every node is a real `ClusterNode` (the daemon's protocol code) driven through `start`,
/// `receive`, `tick` and `stop` in virtual time; the simulator only models the network, the
/// processes' lives and the clock, and watches the maps. The event queue is a binary heap keyed
/// by (time, sequence); a multicast is one fan-out event per latency slice that iterates its
/// receivers; each node has at most one live tick event, re-armed when its `nextDeadline` moves
/// earlier. With the same `SimConfig` (seed included) two runs are identical event for event
/// (`traceHash`).
public final class Simulator {
    public let config: SimConfig
    public private(set) var now: UInt64 = 0
    public let addresses: [IPAddress]
    /// Called with every log line the nodes produce (at `config.logLevel` or above).
    public var logSink: ((_ time: UInt64, _ node: Int, _ event: ClusterEvent) -> Void)?
    /// Called about every `progressInterval` wall seconds while running.
    public var progress: ((SimProgress) -> Void)?
    public var progressInterval: Double = 5
    /// Follow what node `observer`'s map says about node `target`: every change of the entry, and
    /// every multicast `target` sends, is described in `diagnosis` (for explaining an odd map).
    public var diagnose: (observer: Int, target: Int)?
    public private(set) var diagnosis: [String] = []
    private var diagnosedState: String = "absent"
    private var lastInput: String = ""

    final class Slot {
        var node: ClusterNode
        init(_ node: ClusterNode) { self.node = node }
    }

    struct Queued {
        var bytes: [UInt8]
        var heartbeatSocket: Bool
    }

    struct Fanout {
        var bytes: [UInt8] = []
        var from: Int32 = 0
        var receivers: [[Int32]]
        var pending = 0
    }

    private let count: Int
    private var indexOf: [IPAddress: Int32] = [:]
    private var slots: [Slot?]
    public private(set) var status: [SimNodeStatus]
    private var pausedUntil: [UInt64]
    private var held: [[Queued]]
    private var heldBytes: [(discovery: Int, heartbeat: Int)]
    private var armed: [UInt64]
    private var side: [UInt8]
    /// Incarnation each node's current process started with, and the last one it had.
    private var startIncarnation: [UInt64]
    private var lastIncarnation: [UInt64]
    private var processes: [UInt32]
    private var converged: [Bool]
    private var convergedCount = 0
    public private(set) var liveCount = 0
    /// Running nodes on each side of the partition (all on side 0 when there is none).
    private var liveOnSide = [0, 0]
    private var deathMarks: [(declared: Int, learned: Int, expired: Int)]
    /// Each node's member count after its previous input (a death always lowers it).
    private var lastMembers: [Int]

    private var queue = EventQueue()
    private var netRNG: SplitMix64
    private var scenarioRNG: SplitMix64
    private let lossThreshold: UInt64
    private let dupThreshold: UInt64
    private var payloads: [[UInt8]] = []
    private var freePayloads: [Int32] = []
    private var fanouts: [Fanout] = []
    private var freeFanouts: [Int32] = []
    private var actions: [SimAction] = []

    public private(set) var traffic = TrafficCounters()
    public private(set) var events = 0
    public private(set) var traceHash: UInt64 = 0xCBF2_9CE4_8422_2325
    public private(set) var departures: [Departure] = []
    private var activeDepartures: [Int] = []
    public private(set) var falseDeaths: [FalseDeath] = []
    /// (observer, target, incarnation) marks counted as false deaths.
    public private(set) var falseDeathMarks = 0
    private var falseKeys: Set<FalseKey> = []
    private var falseTargets: Set<FalseKey> = []
    public private(set) var epochs: [ConvergenceEpoch] = []
    public private(set) var pausesApplied = 0
    public private(set) var partitioned = false
    private var nextVerify: UInt64 = 0
    /// Full O(N²) checks of the maps run so far (each when every count matched).
    public private(set) var verifications = 0
    public private(set) var wallStart: Double
    private var lastProgressWall: Double
    /// Traffic counters and time where the measuring window starts (see `resetTrafficWindow`).
    public private(set) var windowStart: (time: UInt64, traffic: TrafficCounters) = (0, TrafficCounters())
    private var windowSet = false

    struct FalseKey: Hashable {
        var observer: Int32
        var target: Int32
        var incarnation: UInt64
    }

    /// Incarnation base, like the daemon's wall-clock milliseconds: virtual ms since an epoch.
    public static let incarnationBase: UInt64 = 1_700_000_000_000
    static let skbOverhead = 768

    public init(config: SimConfig) throws {
        try config.validate()
        self.config = config
        let n = config.nodes
        self.count = n
        self.addresses = (0..<n).map { config.address(of: $0) }
        for (i, a) in addresses.enumerated() { indexOf[a] = Int32(i) }
        precondition(indexOf.count == n, "simulated addresses must be distinct")
        self.slots = Array(repeating: nil, count: n)
        self.status = Array(repeating: .notStarted, count: n)
        self.pausedUntil = Array(repeating: 0, count: n)
        self.held = Array(repeating: [], count: n)
        self.heldBytes = Array(repeating: (0, 0), count: n)
        self.armed = Array(repeating: .max, count: n)
        self.side = Array(repeating: 0, count: n)
        self.startIncarnation = Array(repeating: 0, count: n)
        self.lastIncarnation = Array(repeating: 0, count: n)
        self.processes = Array(repeating: 0, count: n)
        self.converged = Array(repeating: false, count: n)
        self.deathMarks = Array(repeating: (0, 0, 0), count: n)
        self.lastMembers = Array(repeating: 0, count: n)
        self.netRNG = SplitMix64(seed: Self.mix(config.seed, 0x6E65_7477_6F72_6B))
        self.scenarioRNG = SplitMix64(seed: Self.mix(config.seed, 0x7363_656E_6172_696F))
        self.lossThreshold = UInt64((config.loss * 4_294_967_296).rounded())
        self.dupThreshold = UInt64((config.duplication * 4_294_967_296).rounded())
        self.startsPending = n
        self.wallStart = Self.wallClock()
        self.lastProgressWall = wallStart

        // Start times: uniform in [0, spread), drawn in node order.
        for i in 0..<n {
            let t = config.startSpread == 0 ? 0 : scenarioRNG.next() % config.startSpread
            queue.push(t, .start, Int32(i))
        }
        if let p = config.pauses { schedulePause(p, from: 0) }
    }

    // MARK: Reading

    public var nodeCount: Int { count }
    /// The current process of node `i` (nil while it is down).
    public func node(_ i: Int) -> ClusterNode? { slots[i]?.node }
    public func index(of address: IPAddress) -> Int? { indexOf[address].map(Int.init) }
    public var runningNodes: [Int] { (0..<count).filter { status[$0] == .running } }
    public func isPaused(_ i: Int) -> Bool { pausedUntil[i] > now }
    /// First time every live map equalled the live set (during a partition: its side's live nodes)
    /// since the live set or the network last changed.
    public var convergedAt: UInt64? { epochs.last?.convergedAt }
    /// The first convergence after every node started (measured from time 0).
    public var startupConvergence: UInt64? { epochs.first?.convergedAt }
    public var eventsPending: Int { queue.count }

    /// Whether every running node's map has exactly the running nodes as members (alive or suspect).
    public func membersEqualLiveSet() -> Bool {
        let live = runningNodes
        for i in live {
            let m = slots[i]!.node.map
            guard m.memberCount == live.count else { return false }
            for j in live where m[addresses[j]]?.state.isMember != true { return false }
        }
        return true
    }

    /// Running nodes whose map differs from the live set of their side: which live nodes each lacks
    /// and which non-running addresses it still holds as members (at most `limit` nodes).
    public func incompleteMaps(limit: Int = 5) -> [(node: Int, missing: [Int], extra: [IPAddress])] {
        var out: [(node: Int, missing: [Int], extra: [IPAddress])] = []
        for i in 0..<count where status[i] == .running && !converged[i] {
            let m = slots[i]!.node.map
            let missing = (0..<count).filter { j in
                status[j] == .running && side[j] == side[i] && m[addresses[j]]?.state.isMember != true
            }
            let extra = m.nodes.filter { n in
                n.state.isMember && (indexOf[n.address].map { status[Int($0)] != .running || side[Int($0)] != side[i] } ?? true)
            }.map(\.address)
            out.append((i, missing, extra))
            if out.count >= limit { break }
        }
        return out
    }

    /// During a partition: whether each side's maps hold exactly that side's running nodes.
    public func membersEqualOwnSide() -> Bool {
        let a = (0..<count).filter { side[$0] == 0 }
        let b = (0..<count).filter { side[$0] == 1 }
        return membersEqual(group: a) && membersEqual(group: b)
    }

    /// Whether every running node of `group` has exactly the running nodes of `group` as members
    /// (one side of a partition).
    public func membersEqual(group: [Int]) -> Bool {
        let live = group.filter { status[$0] == .running }
        for i in live {
            let m = slots[i]!.node.map
            guard m.memberCount == live.count else { return false }
            for j in live where m[addresses[j]]?.state.isMember != true { return false }
        }
        return true
    }

    /// Whether every running node assigns the same IDs to the running nodes, all distinct.
    public func idAssignmentsAgree() -> Bool {
        let live = runningNodes
        guard let first = live.first else { return true }
        let reference = live.map { slots[first]!.node.map[addresses[$0]]?.id }
        guard !reference.contains(where: { $0 == nil }), Set(reference).count == reference.count else { return false }
        for i in live.dropFirst() {
            let m = slots[i]!.node.map
            for (k, j) in live.enumerated() where m[addresses[j]]?.id != reference[k] { return false }
        }
        return true
    }

    /// Sum of the detector counters of the running nodes.
    public func detectorTotals() -> DetectorStats {
        var t = DetectorStats()
        for i in 0..<count {
            guard let s = slots[i]?.node.detector?.stats else { continue }
            t.suspicions += s.suspicions
            t.refutedSuspicions += s.refutedSuspicions
            t.refutations += s.refutations
            t.deathsDeclared += s.deathsDeclared
            t.deathsLearned += s.deathsLearned
            t.lateTicks += s.lateTicks
            t.lateHeartbeats += s.lateHeartbeats
            t.heartbeatsSent += s.heartbeatsSent
            t.probesSent += s.probesSent
            t.probeRequestsSent += s.probeRequestsSent
            t.deadNoticesSent += s.deadNoticesSent
            t.unroutable += s.unroutable
        }
        return t
    }

    // MARK: Running

    /// Runs every event up to and including `time`; `now` is `time` afterwards.
    public func run(until time: UInt64) {
        _ = run(until: time) { false }
    }

    /// Runs until `done()` holds (checked after each event) or `time` passes. Returns whether `done` held.
    @discardableResult
    public func run(until time: UInt64, stopWhen done: () -> Bool) -> Bool {
        if done() { return true }
        while let t = queue.peekTime, t <= time {
            let e = queue.pop()!
            now = e.time
            handle(e)
            events += 1
            if events & 0x3FFF == 0, progress != nil { reportProgress() }
            if done() { return true }
        }
        if now < time { now = time }
        return done()
    }

    /// Runs until every live map equals the live set, or `limit`; returns the convergence time.
    @discardableResult
    public func runUntilConverged(limit: UInt64) -> UInt64? {
        run(until: limit) { self.allStarted && self.convergedAt != nil }
        return allStarted ? convergedAt : nil
    }

    /// Runs until every survivor knows of every departure so far, or `limit`.
    @discardableResult
    public func runUntilDeparturesKnown(limit: UInt64) -> Bool {
        run(until: limit) { self.activeDepartures.isEmpty }
    }

    private var startsPending: Int
    /// Whether every node's first start has happened.
    public var allStarted: Bool { startsPending == 0 }

    public func schedule(_ action: SimAction, at time: UInt64) {
        actions.append(action)
        queue.push(Swift.max(time, now), .action, Int32(actions.count - 1))
    }

    /// Applies `action` now.
    public func apply(_ action: SimAction) {
        switch action {
        case .crash(let i): crash(i)
        case .stop(let i): stop(i)
        case .restart(let i): restart(i)
        case .pause(let i, let d): pause(i, for: d)
        case .partition(let s): partition(s)
        case .heal: heal()
        }
    }

    /// `k` distinct running nodes chosen by the scenario's generator (deterministic).
    public func pickRunning(_ k: Int, excluding: Set<Int> = []) -> [Int] {
        var pool = runningNodes.filter { !excluding.contains($0) }
        var out: [Int] = []
        while out.count < k, !pool.isEmpty {
            let j = Int(scenarioRNG.next() % UInt64(pool.count))
            pool.swapAt(j, pool.count - 1)
            out.append(pool.removeLast())
        }
        return out
    }

    /// Starts the traffic measuring window now (default: at the first convergence).
    public func resetTrafficWindow() {
        windowStart = (now, traffic)
        windowSet = true
    }

    // MARK: Faults

    public func crash(_ i: Int) {
        guard status[i] == .running, let slot = slots[i] else { return }
        trace(6, UInt64(i))
        depart(i, kind: .crash, incarnation: slot.node.incarnation)
        status[i] = .crashed
        takeDown(i)
    }

    public func stop(_ i: Int) {
        guard status[i] == .running, let slot = slots[i] else { return }
        trace(7, UInt64(i))
        // A paused process cannot stop cleanly before it resumes; the leave goes out now regardless.
        let effects = slot.node.stop(now: now)
        send(effects, from: i)
        depart(i, kind: .stop, incarnation: slot.node.incarnation)
        status[i] = .stopped
        takeDown(i)
    }

    public func restart(_ i: Int) {
        guard status[i] == .crashed || status[i] == .stopped else { return }
        trace(8, UInt64(i))
        launch(i)
    }

    public func pause(_ i: Int, for duration: UInt64) {
        guard status[i] == .running, pausedUntil[i] <= now, duration > 0 else { return }
        trace(9, UInt64(i) << 32 ^ duration)
        pausedUntil[i] = now + duration
        pausesApplied += 1
        queue.push(now + duration, .resume, Int32(i))
    }

    public func partition(_ sideB: [Int]) {
        trace(10, UInt64(sideB.count))
        for i in 0..<count { side[i] = 0 }
        for i in sideB { side[i] = 1 }
        partitioned = !sideB.isEmpty
        beginEpoch()
    }

    public func heal() {
        trace(11, 0)
        for i in 0..<count { side[i] = 0 }
        partitioned = false
        beginEpoch()
    }

    /// The network changed under a constant live set: convergence is measured afresh from now.
    private func beginEpoch() {
        recount()
        epochs.append(ConvergenceEpoch(since: now, convergedAt: nil))
        nextVerify = now
    }

    private func takeDown(_ i: Int) {
        lastIncarnation[i] = slots[i]!.node.incarnation
        slots[i] = nil
        pausedUntil[i] = 0
        held[i] = []
        heldBytes[i] = (0, 0)
        armed[i] = .max
        liveCount -= 1
        // It no longer counts as a survivor of earlier departures.
        for d in activeDepartures where departures[d].knownAt[i] == Departure.pendingMark {
            departures[d].knownAt[i] = Departure.notSurvivor
            departures[d].pending -= 1
            departures[d].survivors -= 1
        }
        closeFinishedDepartures()
        liveSetChanged()
    }

    private func launch(_ i: Int) {
        let incarnation = Swift.max(Self.incarnationBase + now / 1_000_000, lastIncarnation[i] + 1)
        processes[i] += 1
        let me = SelfInfo(address: addresses[i], heartbeatPort: config.heartbeatPort)
        let cfg = ClusterConfig(
            cluster: config.cluster, me: me, incarnation: incarnation, discovery: config.discovery,
            detector: config.detector, seed: Self.mix(config.seed, UInt64(i) << 20 | UInt64(processes[i])),
            logLevel: config.logLevel)
        let slot = Slot(ClusterNode(config: cfg, now: now))
        slots[i] = slot
        status[i] = .running
        startIncarnation[i] = incarnation
        deathMarks[i] = (0, 0, 0)
        lastMembers[i] = 0
        liveCount += 1
        liveSetChanged()
        trace(5, UInt64(i) << 32 ^ incarnation)
        let effects = slot.node.start(now: now)
        if let d = diagnose, d.observer == i || d.target == i {
            lastInput = "start"
            diagnosis.append("\(now) ns: node \(i) starts (\(i == d.observer ? "observer" : "target"))")
        }
        afterInput(i, effects)
    }

    private func depart(_ i: Int, kind: Departure.Kind, incarnation: UInt64) {
        var d = Departure(
            kind: kind, node: i, address: addresses[i], incarnation: incarnation, time: now,
            knownAt: Array(repeating: Departure.notSurvivor, count: count))
        for j in 0..<count where j != i && status[j] == .running {
            d.survivors += 1
            if knows(j, departed: addresses[i], incarnation: incarnation) {
                d.knownAt[j] = Departure.neverKnewMark
                d.neverKnew += 1
            } else {
                d.knownAt[j] = Departure.pendingMark
                d.pending += 1
            }
        }
        departures.append(d)
        activeDepartures.append(departures.count - 1)
    }

    private func closeFinishedDepartures() {
        activeDepartures.removeAll { d in
            guard departures[d].pending == 0 else { return false }
            departures[d].completedAt = now
            return true
        }
    }

    /// Whether node `j`'s map shows the departed process gone (dead, left, absent, or superseded).
    @inline(__always)
    private func knows(_ j: Int, departed a: IPAddress, incarnation: UInt64) -> Bool {
        guard let n = slots[j]!.node.map[a] else { return true }
        return !n.state.isMember || n.incarnation > incarnation
    }

    private func schedulePause(_ p: PauseModel, from t: UInt64) {
        // Exponential gaps with mean meanInterval / N: each node pauses once per meanInterval on average.
        let u = Double(scenarioRNG.next() >> 11 | 1) * 0x1p-53
        let gap = -log(u) * Double(p.meanInterval) / Double(count)
        queue.push(t + UInt64(Swift.min(gap, 1e15)), .pause, 0)
    }

    // MARK: Events

    private func handle(_ e: SimEvent) {
        switch e.kind {
        case .start:
            startsPending -= 1
            let i = Int(e.a)
            if status[i] == .notStarted { launch(i) }

        case .tick:
            let i = Int(e.a)
            guard armed[i] == e.time else { return }
            armed[i] = .max
            guard status[i] == .running, pausedUntil[i] <= now, let slot = slots[i] else { return }
            if now >= slot.node.nextDeadline {
                trace(1, UInt64(i))
                if diagnose?.observer == i { lastInput = "tick" }
                let effects = slot.node.tick(now: now)
                afterInput(i, effects)
            } else {
                rearm(i, slot)
            }

        case .unicast:
            let bytes = payloads[Int(e.c)]
            payloads[Int(e.c)] = []
            freePayloads.append(e.c)
            deliver(bytes, to: Int(e.a), from: Int(e.b & Int32.max), heartbeat: e.b < 0, tag: UInt64(e.c))

        case .fanout:
            let r = Int(e.a)
            let s = Int(e.b)
            let bytes = fanouts[r].bytes
            let from = Int(fanouts[r].from)
            let n = fanouts[r].receivers[s].count
            for k in 0..<n {
                deliver(bytes, to: Int(fanouts[r].receivers[s][k]), from: from, heartbeat: false, tag: UInt64(r))
            }
            fanouts[r].receivers[s].removeAll(keepingCapacity: true)
            fanouts[r].pending -= 1
            if fanouts[r].pending == 0 {
                fanouts[r].bytes = []
                freeFanouts.append(Int32(r))
            }

        case .resume:
            let i = Int(e.a)
            guard status[i] == .running, pausedUntil[i] == e.time, let slot = slots[i] else { return }
            pausedUntil[i] = 0
            trace(12, UInt64(i))
            // As an event loop does after a stall: read what queued in the sockets, then run late timers.
            let inputs = held[i]
            held[i] = []
            heldBytes[i] = (0, 0)
            for q in inputs {
                guard status[i] == .running else { break }
                receive(q.bytes, at: i)
            }
            if status[i] == .running { rearm(i, slot) }

        case .action:
            apply(actions[Int(e.a)])

        case .pause:
            guard let p = config.pauses else { return }
            let i = Int(scenarioRNG.next() % UInt64(count))
            pause(i, for: p.length)
            schedulePause(p, from: now)
        }
    }

    @inline(__always)
    private func rearm(_ i: Int, _ slot: Slot) {
        let d = slot.node.nextDeadline
        if d < armed[i] {
            let t = Swift.max(d, now)
            armed[i] = t
            queue.push(t, .tick, Int32(i))
        }
    }

    private func deliver(_ bytes: [UInt8], to j: Int, from i: Int, heartbeat: Bool, tag: UInt64) {
        guard status[j] == .running else {
            traffic.toDownNode += 1
            return
        }
        if side[j] != side[i] {
            traffic.partitionDrops += 1
            return
        }
        if pausedUntil[j] > now {
            let cost = bytes.count + Self.skbOverhead
            if heartbeat {
                guard heldBytes[j].heartbeat + cost <= config.socketBuffer else {
                    traffic.bufferOverflows += 1
                    return
                }
                heldBytes[j].heartbeat += cost
            } else {
                guard heldBytes[j].discovery + cost <= config.socketBuffer else {
                    traffic.bufferOverflows += 1
                    return
                }
                heldBytes[j].discovery += cost
            }
            held[j].append(Queued(bytes: bytes, heartbeatSocket: heartbeat))
            return
        }
        trace(2, UInt64(j) << 32 ^ tag)
        if diagnose?.observer == j {
            lastInput = "type \(bytes.count > 3 ? bytes[3] : 0) from node \(i)"
        }
        receive(bytes, at: j)
    }

    @inline(__always)
    private func receive(_ bytes: [UInt8], at j: Int) {
        traffic.delivered += 1
        traffic.deliveredBytes += bytes.count
        let effects = slots[j]!.node.receive(bytes, interface: 0, now: now)
        afterInput(j, effects)
    }

    // MARK: Outputs

    private func afterInput(_ i: Int, _ effects: [Effect]) {
        if let d = diagnose { diagnoseInput(i, effects, d) }
        if !effects.isEmpty { send(effects, from: i) }
        guard status[i] == .running, let slot = slots[i] else { return }
        rearm(i, slot)
        watch(i, slot)
    }

    private func send(_ effects: [Effect], from i: Int) {
        for e in effects {
            switch e {
            case .multicast(let bytes, let except):
                // One interface: a relay "to every interface but 0" goes nowhere.
                if except == 0 { continue }
                count(bytes)
                traffic.multicasts += 1
                multicast(bytes, from: i)
            case .unicast(let bytes, let to):
                count(bytes)
                traffic.unicasts += 1
                unicast(bytes, from: i, to: to, heartbeat: false)
            case .heartbeat(let bytes, let to, let port):
                count(bytes)
                traffic.heartbeats += 1
                guard port == config.heartbeatPort else {
                    traffic.unroutable += 1
                    continue
                }
                unicast(bytes, from: i, to: to, heartbeat: true)
            case .event(let e):
                logSink?(now, i, e)
            }
        }
    }

    @inline(__always)
    private func count(_ bytes: [UInt8]) {
        traffic.sent += 1
        traffic.sentBytes += bytes.count
        let t = bytes.count > 3 ? Int(bytes[3] & 15) : 0
        traffic.sentByType[t] += 1
        traffic.sentBytesByType[t] += bytes.count
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        trace(3, h)
    }

    private func unicast(_ bytes: [UInt8], from i: Int, to: IPAddress, heartbeat: Bool) {
        guard let j = indexOf[to] else {
            traffic.unroutable += 1
            return
        }
        var copies = 1
        if dupThreshold > 0, netRNG.next() >> 32 < dupThreshold {
            copies = 2
            traffic.duplicated += 1
        }
        for _ in 0..<copies {
            let r = netRNG.next()
            if r & 0xFFFF_FFFF < lossThreshold {
                traffic.lost += 1
                continue
            }
            let s = config.latency.slice(r >> 32)
            let w = config.latency.sliceWidth
            let delay = config.latency.sliceStart[s] + (w > 0 ? netRNG.next() % w : 0)
            let p: Int32
            if let f = freePayloads.popLast() {
                p = f
                payloads[Int(f)] = bytes
            } else {
                p = Int32(payloads.count)
                payloads.append(bytes)
            }
            queue.push(now + delay, .unicast, j, Int32(i) | (heartbeat ? Int32.min : 0), p)
        }
    }

    private func multicast(_ bytes: [UInt8], from i: Int) {
        let k = config.latency.sliceCount
        let r: Int
        if let f = freeFanouts.popLast() {
            r = Int(f)
        } else {
            r = fanouts.count
            fanouts.append(Fanout(receivers: Array(repeating: [], count: k)))
        }
        fanouts[r].bytes = bytes
        fanouts[r].from = Int32(i)
        let loss = lossThreshold
        let dup = dupThreshold
        let latency = config.latency
        for j in 0..<count where j != i && status[j] == .running {
            let x = netRNG.next()
            if x & 0xFFFF_FFFF < loss {
                traffic.lost += 1
                continue
            }
            fanouts[r].receivers[latency.slice(x >> 32)].append(Int32(j))
            if dup > 0, netRNG.next() >> 32 < dup {
                traffic.duplicated += 1
                fanouts[r].receivers[latency.slice(netRNG.next() >> 32)].append(Int32(j))
            }
        }
        var pending = 0
        for s in 0..<k where !fanouts[r].receivers[s].isEmpty {
            queue.push(now + latency.midpoint(s), .fanout, Int32(r), Int32(s))
            pending += 1
        }
        fanouts[r].pending = pending
        if pending == 0 {
            fanouts[r].bytes = []
            freeFanouts.append(Int32(r))
        }
    }

    // MARK: Watching the maps

    private func liveSetChanged() {
        recount()
        if let last = epochs.last, last.convergedAt == nil {
            // A change before convergence extends the current epoch.
        } else {
            epochs.append(ConvergenceEpoch(since: now, convergedAt: nil))
        }
        nextVerify = now
    }

    /// Recomputes which maps hold as many members as their side has running nodes.
    private func recount() {
        liveOnSide = [0, 0]
        for j in 0..<count where status[j] == .running { liveOnSide[Int(side[j])] += 1 }
        convergedCount = 0
        for j in 0..<count {
            let ok = status[j] == .running && slots[j]!.node.map.memberCount == liveOnSide[Int(side[j])]
            converged[j] = ok
            if ok { convergedCount += 1 }
        }
    }

    private func watch(_ i: Int, _ slot: Slot) {
        let members = slot.node.map.memberCount
        let ok = members == liveOnSide[Int(side[i])]
        if ok != converged[i] {
            converged[i] = ok
            convergedCount += ok ? 1 : -1
        }

        // Departures this node learned of with this input.
        var learnedDeaths = 0
        if !activeDepartures.isEmpty {
            var finished = false
            for d in activeDepartures where departures[d].knownAt[i] == Departure.pendingMark {
                let a = departures[d].address
                let known: Bool
                if let n = slot.node.map[a] {
                    known = !n.state.isMember || n.incarnation > departures[d].incarnation
                    if n.state == .dead { learnedDeaths += 1 }
                } else {
                    known = true
                }
                if known {
                    departures[d].knownAt[i] = now
                    departures[d].pending -= 1
                    if departures[d].pending == 0 { finished = true }
                }
            }
            if finished { closeFinishedDepartures() }
        }

        // Deaths this node marked (declared, learned from a notice, expired): any not explained by a
        // departure it just learned of is checked against the live set. A death turns a member into
        // a non-member, and no single input both adds a member and marks one dead, so the counters
        // need reading only when the member count fell.
        let fell = members < lastMembers[i]
        lastMembers[i] = members
        if fell { checkDeathMarks(i, slot, learnedDeaths: learnedDeaths) }

        if convergedCount == liveCount, liveCount > 0, allStarted, now >= nextVerify, epochs.last?.convergedAt == nil {
            verifications += 1
            if partitioned ? membersEqualOwnSide() : membersEqualLiveSet() {
                epochs[epochs.count - 1].convergedAt = now
                if !windowSet { resetTrafficWindow() }
            } else {
                nextVerify = now + 10_000_000
            }
        }
    }

    private func diagnoseInput(_ i: Int, _ effects: [Effect], _ d: (observer: Int, target: Int)) {
        if i == d.target {
            for e in effects {
                if case .multicast(let b, _) = e {
                    diagnosis.append(
                        "\(now) ns: target \(d.target) multicasts type \(b[3]); observer \(d.observer) is \(status[d.observer])")
                }
            }
        }
        guard i == d.observer, let slot = slots[i] else { return }
        let n = slot.node.map[addresses[d.target]]
        let state = n.map { "\($0.state) inc \($0.incarnation) id \($0.id)" } ?? "absent"
        if state != diagnosedState {
            diagnosis.append("\(now) ns: observer \(i) map: target \(diagnosedState) -> \(state) after \(lastInput)")
            diagnosedState = state
        }
    }

    private func checkDeathMarks(_ i: Int, _ slot: Slot, learnedDeaths: Int) {
        let det = slot.node.detector?.stats
        let marks = (
            declared: det?.deathsDeclared ?? 0, learned: det?.deathsLearned ?? 0,
            expired: slot.node.discovery.stats.expired
        )
        let old = deathMarks[i]
        guard marks != old else { return }
        let fresh = marks.declared + marks.learned + marks.expired - old.declared - old.learned - old.expired
        deathMarks[i] = marks
        if fresh > learnedDeaths {
            let cause: FalseDeath.Cause =
                marks.declared > old.declared ? .declared : marks.expired > old.expired ? .expired : .learned
            findFalseDeaths(observer: i, map: slot.node.map, cause: cause)
        }
    }

    private func findFalseDeaths(observer i: Int, map: NodeMap, cause: FalseDeath.Cause) {
        for n in map.nodes where n.state == .dead {
            guard let t32 = indexOf[n.address] else { continue }
            let t = Int(t32)
            guard status[t] == .running, n.incarnation >= startIncarnation[t] else { continue }
            let key = FalseKey(observer: Int32(i), target: t32, incarnation: n.incarnation)
            guard falseKeys.insert(key).inserted else { continue }
            falseDeathMarks += 1
            let target = FalseKey(observer: -1, target: t32, incarnation: n.incarnation)
            if falseTargets.insert(target).inserted {
                falseDeaths.append(
                    FalseDeath(
                        time: now, target: t, incarnation: n.incarnation, firstMarkedBy: i,
                        acrossPartition: side[i] != side[t], cause: cause))
            }
        }
    }

    // MARK: Plumbing

    @inline(__always)
    private func trace(_ kind: UInt64, _ value: UInt64) {
        var h = traceHash ^ (now &* 0x9E37_79B9_7F4A_7C15) ^ (kind << 56) ^ value
        h = (h ^ (h >> 31)) &* 0xBF58_476D_1CE4_E5B9
        traceHash = h ^ (h >> 29)
    }

    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var g = SplitMix64(seed: a ^ (b &* 0x9E37_79B9_7F4A_7C15))
        return g.next()
    }

    private func reportProgress() {
        let w = Self.wallClock()
        guard w - lastProgressWall >= progressInterval else { return }
        lastProgressWall = w
        progress?(
            SimProgress(
                virtualTime: now, events: events, running: liveCount, converged: convergedCount,
                wallSeconds: w - wallStart))
    }

    public var wallSeconds: Double { Self.wallClock() - wallStart }

    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}
