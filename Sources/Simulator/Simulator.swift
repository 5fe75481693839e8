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

/// Deterministic discrete-event simulator of a discd cluster on one LAN.
///
/// Every node is a real `ClusterNode` (the daemon's protocol code) driven through `start`,
/// `receive`, `tick` and `stop` in virtual time; the simulator only models the network, the
/// processes' lives and the clock, and watches the maps. The event queue is a binary heap keyed
/// by (time, sequence); a multicast is one fan-out event per latency slice that iterates its
/// receivers; each node has at most one live tick event, re-armed when its `nextDeadline` moves
/// earlier. With the same `SimConfig` (seed included) two runs are identical event for event
/// (`traceHash`).
///
/// This file: the state and its reading and running API. The network model (`Network.swift`),
/// node lifecycle and faults (`Lifecycle.swift`), the oracle that watches every map (`Oracle.swift`)
/// and the trace (`Trace.swift`) are extensions in their own files; the scenario timeline the
/// `discd simulate` command runs is `Scenario`.
public final class Simulator {
    public let config: SimConfig
    public internal(set) var now: UInt64 = 0
    public let addresses: [IPAddress]
    /// Called with every log line the nodes produce (at `config.logLevel` or above).
    public var logSink: ((_ time: UInt64, _ node: Int, _ event: ClusterEvent) -> Void)?
    /// Called about every `progressInterval` wall seconds while running.
    public var progress: ((SimProgress) -> Void)?
    public var progressInterval: Double = 5
    /// Follow what node `observer`'s map says about node `target`: every change of the entry, and
    /// every multicast `target` sends, is described in `diagnosis` (for explaining an odd map).
    public var diagnose: (observer: Int, target: Int)?
    public internal(set) var diagnosis: [String] = []
    var diagnosedState: String = "absent"
    var lastInput: String = ""

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

    let count: Int
    var indexOf: [IPAddress: Int32] = [:]
    var slots: [Slot?]
    public internal(set) var status: [SimNodeStatus]
    var pausedUntil: [UInt64]
    var held: [[Queued]]
    var heldBytes: [(discovery: Int, heartbeat: Int)]
    /// Datagrams each node's full socket buffers dropped since its last tick: the daemon reads the
    /// kernel's count before every tick and tells its node (`ClusterNode.localLoss`); so does this.
    var overflowed: [Int]
    var armed: [UInt64]
    var side: [UInt8]
    /// The sides of the last partition, and when it healed: a death declared soon after the heal on
    /// silence from before it is the partition's (`cutBeforeHeal`).
    var lastSide: [UInt8]
    var healedAt: UInt64?
    /// Incarnation each node's current process started with, and the last one it had.
    var startIncarnation: [UInt64]
    var lastIncarnation: [UInt64]
    var processes: [UInt32]
    var converged: [Bool]
    var convergedCount = 0
    public internal(set) var liveCount = 0
    /// Running nodes on each side of the partition (all on side 0 when there is none).
    var liveOnSide = [0, 0]
    var deathMarks: [(declared: Int, learned: Int, expired: Int)]
    /// Each node's member count after its previous input (a death always lowers it).
    var lastMembers: [Int]

    var queue = EventQueue()
    var netRNG: SplitMix64
    var scenarioRNG: SplitMix64
    let lossThreshold: UInt64
    let dupThreshold: UInt64
    var payloads: [[UInt8]] = []
    var freePayloads: [Int32] = []
    var fanouts: [Fanout] = []
    var freeFanouts: [Int32] = []
    var actions: [SimAction] = []

    public internal(set) var traffic = TrafficCounters()
    public internal(set) var events = 0
    public internal(set) var traceHash: UInt64 = 0xCBF2_9CE4_8422_2325
    public internal(set) var departures: [Departure] = []
    var activeDepartures: [Int] = []
    /// Restarts after the first start (joins into a running cluster), and which maps learned of them.
    public internal(set) var arrivals: [Arrival] = []
    var activeArrivals: [Int] = []
    /// The traffic counters at 10 s of virtual time: the start storm's first 10 s (all nodes start
    /// within the start spread, 1 s by default).
    public internal(set) var trafficFirst10s: TrafficCounters?
    public internal(set) var falseDeaths: [FalseDeath] = []
    /// Times a map marked a running node dead at an incarnation of its current life.
    public internal(set) var falseDeathMarks = 0
    /// The lives in `falseDeaths`.
    var falseTargets: Set<FalseKey> = []
    public internal(set) var epochs: [ConvergenceEpoch] = []
    public internal(set) var pausesApplied = 0
    public internal(set) var partitioned = false
    var nextVerify: UInt64 = 0
    /// Full O(N²) checks of the maps run so far (each when every count matched).
    public internal(set) var verifications = 0
    public internal(set) var wallStart: Double
    var lastProgressWall: Double
    /// Traffic counters and time where the measuring window starts (see `resetTrafficWindow`).
    public internal(set) var windowStart: (time: UInt64, traffic: TrafficCounters) = (0, TrafficCounters())
    var windowSet = false
    /// The traffic window from convergence to the first scenario action (crash, stop, partition,
    /// pause): the settled cluster's load before anything happens to it.
    public internal(set) var steadyBeforeEvents: (from: UInt64, to: UInt64, traffic: TrafficCounters)?

    /// A node's life (its incarnation) some map marked dead while it ran.
    struct FalseKey: Hashable {
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
        self.overflowed = Array(repeating: 0, count: n)
        self.armed = Array(repeating: .max, count: n)
        self.side = Array(repeating: 0, count: n)
        self.lastSide = Array(repeating: 0, count: n)
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
    public func membersEqualLiveSet() -> Bool { membersEqual(group: Array(0..<count)) }

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
    ///
    /// Each map is read in its own order, entry after entry, and every member looked up in a table
    /// of the group's addresses: looking each running node up in each map instead read one record
    /// of another page per look-up, N² of them (10^8 at 10,000 nodes, seconds each time the oracle
    /// verified a convergence). A map whose members are as many as the running nodes, each one of
    /// them, holds exactly them (a map holds an address once).
    public func membersEqual(group: [Int]) -> Bool {
        let live = group.filter { status[$0] == .running }
        let wanted = AddressSet(live.map { addresses[$0] })
        for i in live {
            guard slots[i]!.node.memberCountInPlace() == live.count else { return false }
            var members = 0
            var foreign = false
            slots[i]!.node.forEachBriefInPlace { b in
                guard b.state.isMember else { return }
                members += 1
                if !wanted.contains(b.address) { foreign = true }
            }
            guard !foreign, members == live.count else { return false }
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
            t.suspicionsAnswered += s.suspicionsAnswered
            t.deathsDeclared += s.deathsDeclared
            t.deathsLearned += s.deathsLearned
            t.lateTicks += s.lateTicks
            t.lateHeartbeats += s.lateHeartbeats
            t.localDrops += s.localDrops
            t.lossGraces += s.lossGraces
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
            if trafficFirst10s == nil, e.time >= 10_000_000_000 { trafficFirst10s = traffic }
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

    var startsPending: Int
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

    /// A scenario event (crash, stop, pause, partition) happens now: the settled window ends here.
    func scenarioEvent() {
        if steadyBeforeEvents == nil, windowSet, now > windowStart.time {
            steadyBeforeEvents = (windowStart.time, now, traffic - windowStart.traffic)
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
}

/// A fixed set of addresses, for a membership test in a few nanoseconds: open addressing over the
/// map's own address hash, at a load of at most 1/2. The unspecified address marks an empty entry
/// (no node has it: a map refuses it).
struct AddressSet {
    private var keys: [IPAddress]
    private let mask: Int

    init(_ addresses: [IPAddress]) {
        var size = 16
        while size < addresses.count * 2 { size <<= 1 }
        keys = Array(repeating: .zero, count: size)
        mask = size - 1
        for a in addresses where !a.isUnspecified && !contains(a) {
            var i = Int(truncatingIfNeeded: NodeMap.addressHash(a)) & mask
            while keys[i] != .zero { i = (i + 1) & mask }
            keys[i] = a
        }
    }

    func contains(_ a: IPAddress) -> Bool {
        var i = Int(truncatingIfNeeded: NodeMap.addressHash(a)) & mask
        while keys[i] != .zero {
            if keys[i] == a { return true }
            i = (i + 1) & mask
        }
        return false
    }
}
