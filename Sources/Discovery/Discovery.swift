import Events
import NodeMap
import Wire

/// Settings of the discovery protocol; invariants are checked where they are set.
public struct DiscoverySettings: Sendable, Equatable {
    /// Announce interval of a small cluster (ns).
    public var baseInterval: TimeSpan
    /// Cluster-wide announce budget (announces per second): with N nodes each node announces every
    /// max(baseInterval, N / aggregateRate) seconds, as RTCP scales its report interval.
    public var aggregateRate: Double
    /// A member not heard from for `expiryFactor` announce intervals is declared dead by discovery
    /// when no failure detector runs.
    public var expiryFactor: Double
    /// The same while the detector runs: expiry is then only a backstop for nodes no observer
    /// watches, so it waits long enough that lost announces cannot trigger it.
    public var detectorExpiryFactor: Double = 10
    /// Dead and left nodes stay in the map this long after they were last heard, then are removed.
    public var purgeAfter: TimeSpan
    /// Whether this node relays multicast between its interfaces (several `-i` interfaces, no `-m`).
    public var relay: Bool
    /// Entries kept to recognise relayed copies of a message already seen.
    public var seenCacheSize: Int

    // Anti-entropy and joins (docs/PROTOCOL.md "Anti-entropy", "Joins and restart storms").
    /// Most `syncEntries` datagrams in one answer; more differing buckets are asked for again.
    public var syncReplyDatagrams = 16
    /// Most `syncEntries` datagrams pushed back after one answer datagram.
    public var syncPushDatagrams = 4
    /// Sync requests and offers this node answers per second (token bucket; the burst is the same).
    public var syncAnswerRate: Double = 20
    /// A sync that got no last answer datagram by then is given up (a later heartbeat retries).
    public var syncTimeout: TimeSpan = .milliseconds(500)
    /// A newcomer's pull page that got no last datagram by then is asked again (the answer of a
    /// LAN peer takes a millisecond; a refused request waits one token, 50 ms at 20/s).
    public var pullRetry: TimeSpan = .milliseconds(125)
    /// A newcomer stops pulling after this, or after `pullMisses` pages in a row asked again
    /// without an answer; heartbeat syncs repair what is left.
    public var pullLimit: TimeSpan = .seconds(10)
    public var pullMisses = 4
    /// Joins (and revivals) within `influxWindow` that make an influx: max(influxMinJoins, members / influxDivisor).
    public var influxMinJoins = 8
    public var influxDivisor = 16
    public var influxWindow: TimeSpan = .seconds(2)
    /// The influx is over when no join came for this long; then the re-announce wave starts.
    public var influxQuiet: TimeSpan = .milliseconds(300)
    /// Wave announces: `waveCopies` copies, the first uniform in [0, spread) after the quiet, then
    /// `spread` apart, where spread = 50 us per member within [100 ms, waveSpread]; at most one wave
    /// per `waveGap`. Three, not two: a node that started after another's join hears it only in
    /// the wave, and each copy it loses costs a sync of the whole digest bucket (N / 1,024 entries).
    /// At 10,000 nodes and 5 % loss, two copies cost 15 sync datagrams per node, three about half.
    public var waveCopies = 3
    public var waveSpread: TimeSpan = .milliseconds(500)
    public var waveGap: TimeSpan = .seconds(10)

    public struct Invalid: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    public init(
        baseInterval: TimeSpan = .seconds(3), aggregateRate: Double = 100, expiryFactor: Double = 3.5,
        purgeAfter: TimeSpan = .seconds(60), relay: Bool = false, seenCacheSize: Int = 4096
    ) throws {
        guard baseInterval >= .milliseconds(10) else { throw Invalid(description: "announce interval must be at least 10ms") }
        guard baseInterval <= .seconds(3600) else { throw Invalid(description: "announce interval must be at most 1h") }
        guard aggregateRate > 0 else { throw Invalid(description: "aggregate announce rate must be positive") }
        guard expiryFactor >= 2 else { throw Invalid(description: "expiry factor must be at least 2 announce intervals") }
        guard seenCacheSize >= 16 else { throw Invalid(description: "seen cache must hold at least 16 entries") }
        self.baseInterval = baseInterval
        self.aggregateRate = aggregateRate
        self.expiryFactor = expiryFactor
        self.purgeAfter = purgeAfter
        self.relay = relay
        self.seenCacheSize = seenCacheSize
    }

    public static let `default` = try! DiscoverySettings()
}

extension DiscoveryCore {
    /// Mean delay of the first announce after the join (ns).
    public static let earlyAnnounce: TimeSpan = .milliseconds(600)
}

/// Who this node is.
public struct SelfInfo: Sendable, Equatable {
    public var address: IPAddress
    public var preferredID: NodeID?
    public var explicitID: Bool
    public var aliases: [Alias]
    public var heartbeatPort: UInt16
    public var capabilities: [Capability]

    public init(
        address: IPAddress, preferredID: NodeID? = nil, explicitID: Bool = false, aliases: [Alias] = [],
        heartbeatPort: UInt16 = 0, capabilities: [Capability] = []
    ) {
        self.address = address
        self.explicitID = explicitID && preferredID != nil
        self.preferredID = self.explicitID ? preferredID : NodeID.derived(from: address)
        self.aliases = aliases
        self.heartbeatPort = heartbeatPort
        self.capabilities = capabilities
    }
}

/// What the discovery core asks its shell to do.
public enum DiscoveryOutput: Hashable, Sendable {
    /// Originate a message on every cluster interface.
    case multicast(Body)
    /// Send a message to one node's discovery port.
    case unicast(Body, to: IPAddress)
    /// Forward a received message (hops already incremented) on every interface but `except`.
    case relay(Message, except: Int)
    case changes([NodeMapChange])
    case event(DiscoveryEvent)
    /// A map holds us dead or left at `past` or later (`by` sent the entry): refute past it.
    case refute(accusedAs: NodeState, by: IPAddress, past: UInt64)
}

/// What discovery noticed (stable names, see `Event`).
public enum DiscoveryEvent: Event, Hashable {
    /// A member silent for `silent` (longer than the expiry) is declared dead by discovery.
    case expired(address: IPAddress, id: NodeID, silent: TimeSpan)
    /// A node spoke at an incarnation our map will not take (`held` is what we hold): it was told.
    case revivalRequested(address: IPAddress, held: UInt64, theirs: UInt64)

    public var name: String {
        switch self {
        case .expired: "discovery.expired"
        case .revivalRequested: "discovery.revival_requested"
        }
    }
    public var level: LogLevel {
        switch self {
        case .expired: .notice
        case .revivalRequested: .info
        }
    }
    public func fields(into f: inout EventFields) {
        switch self {
        case .expired(let a, let id, let silent):
            f.add("address", a)
            f.add("id", id.rawValue)
            f.add("silent", duration: silent.nanos)
        case .revivalRequested(let a, let held, let theirs):
            f.add("address", a)
            f.add("held_incarnation", held)
            f.add("their_incarnation", theirs)
        }
    }
    public var text: String {
        switch self {
        case .expired(let a, let id, let silent):
            "member \(a) id=\(id) expired: silent for \(DurationText.format(silent.nanos))"
        case .revivalRequested(let a, let held, let theirs):
            "\(a) speaks at incarnation \(theirs) but this map holds \(held): told it to refute"
        }
    }
}

/// The discovery protocol of one node (after omdiscd): periodic announces with jitter whose
/// interval stretches with the cluster size, join answered at once with the map, leave on a clean
/// stop, relaying between networks with loop suppression, and expiry of silent nodes.
///
/// Pure: inputs are received messages, ticks and interface changes, each with `now` (ns);
/// outputs are messages to send and map changes.
public struct DiscoveryCore: Sendable {
    // Stored properties in the order of their use by a datagram (Swift lays a struct out in
    // declaration order), so that a reader of thousands of nodes in turn (the simulator hands each
    // multicast to every node) can ask for the lines an input reads instead of all of the core.
    // First, within `changeBytes`: what a join or the news of a node reads and writes (whether
    // discovery runs and admits, the influx counts, the deadlines `nextDeadlineInPlace` compares,
    // our address, the join counter). `ClusterNode` keeps its own copy of `started` and
    // `relaying`, which every datagram reads.
    public private(set) var started = false
    private var relaysSeen = false
    /// `settings.relay` (`settings` is 168 bytes that a datagram mostly does not read).
    private let relay: Bool
    /// An influx was seen and its wave not yet scheduled.
    var influxPending = false
    /// The pull is under way: from the first offer until its last page came (or `pullLimit`
    /// passed). Meanwhile a lost request or last page is asked again after `pullRetry`, and the
    /// node neither offers nor takes announces of nodes it lacks for a partition healing.
    var pullActive = false
    /// The next wave announce goes out at a new incarnation (a heal wave).
    var waveBump = false
    /// Joins counted in the current and the previous half of the influx window.
    var joinsNow = 0
    var joinsBefore = 0
    var joinWindowStart: Instant = .zero
    var lastJoinAt: Instant = .zero
    /// Announces of non-members counted in the current influx window (see `noteNews`).
    var newsCount = 0
    var newsWindowStart: Instant = .zero
    private var nextAnnounce: Instant = .zero
    private var nextScan: Instant = .zero
    /// The wave's next copy (nil: no wave under way), the copies after it, and their spacing. Not
    /// an array of due times: every datagram's `nextDeadline` reads it, and an emptied array's
    /// buffer was one more cache miss per datagram in the simulator.
    var waveNext: Instant?
    var pullEndsBy: Instant = .zero
    /// `settings`' fields that a join or news reads (`inInflux`, `noteNews`, `nextDeadlineInPlace`).
    let influxMinJoins: Int
    let influxDivisor: Int
    let influxWindow: TimeSpan
    let influxQuiet: TimeSpan
    let pullRetry: TimeSpan
    public private(set) var me: SelfInfo
    /// Its first line (`joinsReceived`) is within `changeBytes`.
    public internal(set) var stats = DiscoveryStats()

    // The rest.
    /// The sync this node started and waits on (at most one); `nextDeadlineInPlace` reads it only
    /// while a pull is under way.
    var session: SyncSession?
    public let settings: DiscoverySettings
    public internal(set) var incarnation: UInt64
    var rng: SplitMix64
    private var seen: RecentSet<SeenKey>
    /// When each node was last answered with a revival `dead` (see `mayAnswerRevival`).
    private var revivalAnswered: [IPAddress: Instant] = [:]

    // Anti-entropy state (AntiEntropy.swift).
    /// The last digest each heartbeat origin sent, and ours when it came.
    var peerDigests: [IPAddress: PeerDigest] = [:]
    /// Sessions that ended lately: their answer datagrams still in flight are taken.
    var recentSessions: [SyncSession] = []
    var sessionCounter: UInt32 = 0
    /// Sessions this node answered, by requester (their push-back is accepted); bounded.
    var answered: [IPAddress: UInt32] = [:]
    var answerTokens: Double = 0
    var tokensAt: Instant = .zero
    var waveLeft = 0
    var waveStep: TimeSpan = .zero
    var lastWave: Instant?
    /// No heartbeat sync starts before this: the end of the last wave this node joined, when every
    /// node's copies are out (not only this node's own), so that syncs repair what the wave lost
    /// instead of racing it.
    var wavesEndAt: Instant = .zero
    /// The node a newcomer pulls its map from (set by the first offer taken), and the member
    /// count its offer announced: a later offer of more than twice as many members replaces it.
    var pulledFrom: IPAddress?
    var pulledMembers = 0
    /// Pages asked again in a row without a datagram of the answer: at `pullMisses` the offerer is
    /// taken to be gone (crashed, or refusing), and heartbeat syncs take over.
    var pullMisses = 0

    struct SeenKey: Hashable, Sendable {
        var origin: IPAddress
        var incarnation: UInt64
        var messageID: UInt32
        var type: UInt8
    }

    /// Whether a failure detector runs beside discovery (expiry is then only a backstop).
    public let detectorRunning: Bool

    /// The bytes from the start of the core that a join or news reads (see the first fields).
    public static let changeBytes =
        MemoryLayout<DiscoveryCore>.offset(of: \DiscoveryCore.stats)! + MemoryLayout<DiscoveryStats>.offset(of: \DiscoveryStats.joinsReceived)!
        + MemoryLayout<Int>.size

    public init(
        settings: DiscoverySettings = .default, me: SelfInfo, incarnation: UInt64, seed: UInt64,
        detectorRunning: Bool = false
    ) {
        self.settings = settings
        self.relay = settings.relay
        self.influxMinJoins = settings.influxMinJoins
        self.influxDivisor = settings.influxDivisor
        self.influxWindow = settings.influxWindow
        self.influxQuiet = settings.influxQuiet
        self.pullRetry = settings.pullRetry
        self.detectorRunning = detectorRunning
        self.me = me
        self.incarnation = incarnation
        self.rng = SplitMix64(seed: seed)
        self.seen = RecentSet(capacity: settings.seenCacheSize)
    }

    /// The claim this node makes about itself.
    public var selfClaim: NodeClaim {
        NodeClaim(
            address: me.address, preferredID: me.preferredID, explicitID: me.explicitID, aliases: me.aliases,
            incarnation: incarnation, hops: 0, heartbeatPort: me.heartbeatPort, capabilities: me.capabilities)
    }

    public var selfInfo: NodeInfo {
        NodeInfo(
            aliases: me.aliases, heartbeatPort: me.heartbeatPort,
            announceIntervalMillis: UInt32(clamping: interval(members: 1).nanos / 1_000_000),
            capabilities: me.capabilities)
    }

    /// The announce interval for a cluster of `members` nodes (ns).
    public func interval(members: Int) -> TimeSpan {
        let stretched = Double(members) / settings.aggregateRate * 1e9
        return max(settings.baseInterval, stretched.isFinite ? TimeSpan(nanos: UInt64(min(stretched, 3.6e12))) : settings.baseInterval)
    }

    private mutating func jittered(_ base: TimeSpan) -> TimeSpan {
        // Uniform in [0.5, 1.5) of the interval, so that nodes started together spread out.
        base / 2 + TimeSpan(nanos: UInt64.random(in: 0..<max(base.nanos, 1), using: &rng))
    }

    /// The earliest time `tick` needs to be called.
    /// `nextDeadline` read in place (a getter of this large struct, called across modules, may be
    /// handed a copy of it).
    /// The computation lives here, not in the getter: a non-mutating call on a struct this large is
    /// handed a copy of it (a `memcpy` of the whole core for every call, seen in the simulator).
    public mutating func nextDeadlineInPlace() -> Instant {
        min(
            nextAnnounce, nextScan, waveNext ?? .distantFuture, influxPending ? lastJoinAt + influxQuiet : .distantFuture,
            pullActive ? min(pullEndsBy, (session?.started ?? .zero) + pullRetry) : .distantFuture)
    }

    public var nextDeadline: Instant {
        var copy = self
        return copy.nextDeadlineInPlace()
    }

    /// Starts discovery: this node enters its own map and says `join`.
    public mutating func start(now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        started = true
        var out: [DiscoveryOutput] = []
        let c = map.observe(selfClaim, now: now)
        if !c.isEmpty { out.append(.changes(c)) }
        out.append(.multicast(.join(info(map))))
        stats.joinsSent += 1
        answerTokens = settings.syncAnswerRate
        tokensAt = now
        // One early announce, soon after the join: nodes that started a moment after us missed the
        // join (their socket was not there yet) and would otherwise wait a whole interval.
        nextAnnounce = now + jittered(min(interval(members: map.memberCount), settings.baseInterval, Self.earlyAnnounce))
        nextScan = now + settings.baseInterval
        return out
    }

    func info(_ map: NodeMap) -> NodeInfo {
        NodeInfo(
            aliases: me.aliases, heartbeatPort: me.heartbeatPort,
            announceIntervalMillis: UInt32(clamping: interval(members: map.memberCount).nanos / 1_000_000),
            capabilities: me.capabilities)
    }

    /// Timers: the periodic announce, expiry of silent members and purge of old dead ones.
    public mutating func tick(now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        guard started else { return [] }
        var out: [DiscoveryOutput] = []
        map.touch(me.address, now: now)
        if now >= nextAnnounce {
            // During an influx the wave announces after it replace the early one.
            if !influxPending && waveNext == nil {
                out.append(.multicast(.announce(info(map))))
                stats.announcesSent += 1
            }
            nextAnnounce = now + jittered(interval(members: map.memberCount))
        }
        waveTick(now: now, map: &map, out: &out)
        pullTick(now: now, map: map, out: &out)
        if now >= nextScan {
            let iv = interval(members: map.memberCount)
            let expiry = TimeSpan(nanos: UInt64(Double(iv.nanos) * (detectorRunning ? settings.detectorExpiryFactor : settings.expiryFactor)))
            var changes: [NodeMapChange] = []
            for n in map.nodes where n.address != me.address {
                let silent = now - n.lastHeard
                if n.state.isMember && silent > expiry {
                    changes += map.setState(n.address, to: .dead, incarnation: n.incarnation)
                    stats.expired += 1
                    out.append(.event(.expired(address: n.address, id: n.id, silent: silent)))
                } else if !n.state.isMember && silent > tombstoneLifetime(map) {
                    changes += map.remove(n.address)
                }
            }
            if !changes.isEmpty { out.append(.changes(changes)) }
            // Scan a few times per expiry period; cheap even for large maps.
            nextScan = now + max(settings.baseInterval, iv / 2)
        }
        return out
    }

    /// Announce at once with an incarnation above both ours and the accusation's: refutes a
    /// suspicion, a death notice or a leave about us (memberlist's `refute` jumps the same way), and
    /// recovers from a restart whose clock-derived incarnation fell below what peers remember.
    public mutating func refute(past accusation: UInt64, now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        let base = max(incarnation, accusation)
        incarnation = base == .max ? base : base + 1
        stats.refutations += 1
        var out: [DiscoveryOutput] = []
        let c = map.observe(selfClaim, now: now)
        if !c.isEmpty { out.append(.changes(c)) }
        out.append(.multicast(.announce(info(map))))
        return out
    }

    /// Our addresses changed (interface up/down, address added): announce the new set at once.
    public mutating func interfacesChanged(aliases: [Alias], now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        guard aliases != me.aliases else { return [] }
        me.aliases = aliases
        var out: [DiscoveryOutput] = []
        let c = map.observe(selfClaim, now: now)
        if !c.isEmpty { out.append(.changes(c)) }
        if started { out.append(.multicast(.announce(info(map)))) }
        return out
    }

    /// Our transport endpoints changed (an RDMA device came up with a new queue pair, or went away):
    /// the map's own entry follows and, once started, an announce tells the others at once.
    public mutating func capabilitiesChanged(_ capabilities: [Capability], now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        guard capabilities != me.capabilities else { return [] }
        me.capabilities = capabilities
        var out: [DiscoveryOutput] = []
        let c = map.observe(selfClaim, now: now)
        if !c.isEmpty { out.append(.changes(c)) }
        if started { out.append(.multicast(.announce(info(map)))) }
        return out
    }

    /// A clean stop: say `leave` so that the others drop us at once.
    public mutating func stop(now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        guard started else { return [] }
        started = false
        var out: [DiscoveryOutput] = [.multicast(.leave)]
        let c = map.setState(me.address, to: .left)
        if !c.isEmpty { out.append(.changes(c)) }
        return out
    }

    /// Whether `admit` has anything to do with `m`: only a relayed type does, and only where this
    /// node relays or has seen a relayed copy. The common datagram (one network, no relays) skips
    /// `admit` and the copies of its result (about 4 % of the simulator's time at 500 nodes).
    /// `relaying` is this core's (`ClusterNode` passes its copy of it, kept beside its hot fields).
    @inline(__always)
    public static func needsAdmission(_ m: Message, relaying: Bool) -> Bool {
        m.header.type.isRelayed && (relaying || m.header.hops > 0)
    }

    /// Whether this node relays or has seen a relayed copy: then `admit` has work with every
    /// datagram of a relayed type (without, only with one that came through a relay).
    public var relaying: Bool { relay || relaysSeen }

    /// Relay and duplicate suppression for the multicast message types. Returns false when the
    /// message was seen before (a relayed copy) and must not be processed again.
    public mutating func admit(_ m: Message, interface: Int, now: Instant) -> (process: Bool, relay: DiscoveryOutput?) {
        // Without relays in play a copy cannot arrive twice by design; skip the cache (it costs memory).
        // Once a relayed message was seen, originals are remembered too, so that a relayed copy that
        // arrives after its original (two gateways) is recognised.
        guard Self.needsAdmission(m, relaying: relaying) else { return (true, nil) }
        if m.header.hops > 0 { relaysSeen = true }
        let key = SeenKey(
            origin: m.header.origin, incarnation: m.header.incarnation, messageID: m.header.messageID,
            type: m.header.type.rawValue)
        guard seen.insert(key) else {
            stats.duplicates += 1
            return (false, nil)
        }
        guard relay, m.header.hops < Wire.maxHops else { return (true, nil) }
        var fwd = m
        fwd.header.hops += 1
        stats.relayed += 1
        return (true, .relay(fwd, except: interface))
    }

    /// Handles announce, join, leave and map-sync messages (already admitted).
    public mutating func receive(_ m: Message, now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        receive(m, sender: map.brief(m.header.origin), now: now, map: &map)
    }

    /// `receive`, for a caller that looked the sender up already: `sender` is what `map` holds of
    /// `m`'s origin now (one hashed look-up per datagram fewer: every node receives every
    /// multicast).
    public mutating func receive(_ m: Message, sender: NodeBrief?, now: Instant, map: inout NodeMap) -> [DiscoveryOutput] {
        let h = m.header
        guard h.origin != me.address else { return [] }
        var out: [DiscoveryOutput] = []
        switch m.body {
        case .announce(let info), .join(let info):
            let claim = Self.claim(h, info)
            let known = sender
            if case .announce = m.body, !(known?.state.isMember ?? false) {
                noteNews(now: now, memberCount: map.memberCount)
            }
            if let known,
                (!known.state.isMember && known.incarnation == h.incarnation) || known.incarnation > h.incarnation,
                responsible(for: known, map: map), mayAnswerRevival(h.origin, now: now, map: map)
            {
                // The node speaks at an incarnation our map will not take: we hold it dead or left at
                // this incarnation (a lost-message expiry, a notice it missed, a forged leave), or we
                // know a higher one (it restarted after its clock stepped back; ClusterNode passes that
                // on only while we hold it dead or left). Tell it what we hold, so that it refutes
                // past it and every map takes it back.
                out.append(
                    .unicast(
                        .dead(target: h.origin, targetIncarnation: known.incarnation, targetID: known.id.rawValue),
                        to: h.origin))
                out.append(.event(.revivalRequested(address: h.origin, held: known.incarnation, theirs: h.incarnation)))
                stats.revivalsRequested += 1
            }
            let c = map.observe(claim, now: now)
            if !c.isEmpty { out.append(.changes(c)) }
            if case .join = m.body {
                stats.joinsReceived += 1
                noteJoin(now: now, memberCount: map.memberCount)
                answerJoin(of: h.origin, now: now, map: &map, out: &out)
            }
        case .leave:
            if let n = sender, h.incarnation >= n.incarnation {
                let c = map.setState(h.origin, to: .left, incarnation: h.incarnation)
                if !c.isEmpty { out.append(.changes(c)) }
            }
        case .mapSync(_, _, let entries):
            var changes: [NodeMapChange] = []
            // The sender's distance to each entry plus ours to the sender; heard as long ago as the
            // sender last heard it, not now (a sync must not lend a silent node a fresh lifetime).
            let senderHops = Int(sender?.hops ?? h.hops)
            for e in entries where e.address != me.address && e.state.isMember {
                if let known = map.brief(e.address), known.incarnation >= e.incarnation { continue }
                let claim = NodeClaim(
                    address: e.address, preferredID: e.explicitID ? NodeID(rawValue: e.preferredID) : nil,
                    explicitID: e.explicitID, aliases: e.aliases, incarnation: e.incarnation,
                    hops: UInt8(clamping: Int(e.hops) + senderHops), heartbeatPort: e.heartbeatPort)
                changes += map.observe(claim, now: now - .milliseconds(UInt64(e.ageMillis)))
            }
            if !changes.isEmpty { out.append(.changes(changes)) }
        case .syncRequest(let r):
            answerSync(r, from: h.origin, now: now, map: map, out: &out)
        case .syncEntries(let e):
            receiveEntries(e, from: h.origin, now: now, map: &map, out: &out)
        case .offer(let members, let digest):
            offered(by: h.origin, members: Int(members), digest: digest, now: now, map: map, out: &out)
        default:
            break
        }
        return out
    }

    /// What an announce or join with header `h` and body `info` claims for its sender.
    @inline(__always)
    public static func claim(_ h: Header, _ info: NodeInfo) -> NodeClaim {
        NodeClaim(
            address: h.origin, preferredID: h.flags.contains(.explicitID) ? NodeID(rawValue: h.senderID) : nil,
            explicitID: h.flags.contains(.explicitID), aliases: info.aliases, incarnation: h.incarnation,
            hops: h.hops, heartbeatPort: info.heartbeatPort, capabilities: info.capabilities)
    }

    /// At most one revival answer per node per announce interval: a replayed or forged stale
    /// announce (repeated, or multicast so that every node answers) cannot turn this node into a
    /// stream of unicasts at its victim. The table holds only nodes of the map.
    private mutating func mayAnswerRevival(_ origin: IPAddress, now: Instant, map: NodeMap) -> Bool {
        if let last = revivalAnswered[origin], now < last + settings.baseInterval { return false }
        revivalAnswered[origin] = now
        if revivalAnswered.count > 2 * max(map.count, 16) {
            revivalAnswered = revivalAnswered.filter { map.contains($0.key) }
        }
        return true
    }


    /// Our members, split into datagram-sized map-sync messages.
    public func mapSync(_ map: NodeMap, now: Instant, clusterNameLength: Int = Wire.maxClusterName) -> [Body] {
        let room = Message.mapSyncCapacity(nameLength: clusterNameLength)
        var parts: [[SyncEntry]] = [[]]
        var used = 0
        for n in map.nodes where n.state.isMember {
            let e = SyncEntry(n, now: now)
            if used + e.encodedSize > room {
                parts.append([])
                used = 0
            }
            parts[parts.count - 1].append(e)
            used += e.encodedSize
        }
        let total = UInt16(min(parts.count, Int(UInt16.max)))
        return parts.prefix(Int(total)).enumerated().map { .mapSync(part: UInt16($0.offset), parts: total, entries: $0.element) }
    }
}

public struct DiscoveryStats: Sendable, Equatable {
    public var announcesSent = 0
    public var joinsSent = 0
    public var joinsReceived = 0
    public var syncsSent = 0
    public var relayed = 0
    public var duplicates = 0
    public var expired = 0
    public var refutations = 0
    /// Announces heard from nodes our map holds dead at the same incarnation (answered with `suspect`).
    public var revivalsRequested = 0
    /// Anti-entropy: requests sent, answered, refused (no token), answer and push datagrams sent,
    /// entries merged that changed the map, answers that belonged to no session of ours.
    public var syncRequestsSent = 0
    public var syncRequestsAnswered = 0
    public var syncRequestsRefused = 0
    public var syncEntriesSent = 0
    public var syncEntriesMerged = 0
    public var syncUnsolicited = 0
    public var offersSent = 0
    /// Announces sent by unicast to a newcomer with our capabilities (`answerJoin`).
    public var introductionsSent = 0
    public var pulls = 0
    public var waveAnnounces = 0
    /// Waves started by many announces of non-members at once (a partition healing).
    public var healWaves = 0
}
