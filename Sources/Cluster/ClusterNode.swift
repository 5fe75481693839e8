import Auth
import Detector
import Discovery
import NodeMap
import Wire

public struct ClusterConfig: Sendable {
    public var cluster: String
    public var me: SelfInfo
    /// Initial incarnation; the daemon uses wall-clock milliseconds at start so that it grows across restarts.
    public var incarnation: UInt64
    public var discovery: DiscoverySettings
    /// nil disables the failure detector (discovery expiry still declares silent nodes dead).
    public var detector: DetectorSettings?
    public var seed: UInt64
    /// Least severe event produced (the simulator asks for warnings only).
    public var logLevel: LogLevel
    public var timeBaseUnixNanos: Int64
    /// How many nodes the map is expected to hold (the simulator knows it): its arrays are sized
    /// once. 0: grow as nodes arrive (the daemon).
    public var mapCapacityHint = 0
    /// Cluster keys: every datagram is signed with the primary key and every received one must
    /// carry a tag of a key of the ring and a fresh replay counter. nil: no authentication.
    public var auth: AuthConfig?
    /// Keep a list of the nodes the map marks dead, for `takeRecordedDeaths()` (the simulator's
    /// oracle checks each against the live set). Off in the daemon, which never takes it.
    public var recordDeaths = false

    public init(
        cluster: String, me: SelfInfo, incarnation: UInt64, discovery: DiscoverySettings = .default,
        detector: DetectorSettings?, seed: UInt64, logLevel: LogLevel = .info, timeBaseUnixNanos: Int64 = 0
    ) {
        self.cluster = cluster
        self.me = me
        self.incarnation = incarnation
        self.discovery = discovery
        self.detector = detector
        self.seed = seed
        self.logLevel = logLevel
        self.timeBaseUnixNanos = timeBaseUnixNanos
    }
}

public struct AuthConfig: Sendable {
    public var keyring: Keyring
    /// The first replay counter this node sends (the daemon: wall-clock milliseconds << 16, so that
    /// it grows across restarts).
    public var counterSeed: UInt64
    /// Whether RDMA immediate-only notices (which cannot carry a tag) are believed: off by default
    /// with keys, since anyone on the fabric could send one (docs/SECURITY.md).
    public var trustImmediates: Bool

    public init(keyring: Keyring, counterSeed: UInt64, trustImmediates: Bool = false) {
        self.keyring = keyring
        self.counterSeed = counterSeed
        self.trustImmediates = trustImmediates
    }
}

/// What the node asks its shell (daemon or simulator) to do.
public enum Effect: Sendable, Equatable {
    /// A datagram for the cluster group on every interface, or every interface but `except`.
    case multicast([UInt8], except: Int?)
    /// A datagram for a node's discovery port.
    case unicast([UInt8], to: IPAddress)
    /// A datagram for a node's heartbeat port (detector traffic).
    case heartbeat([UInt8], to: IPAddress, port: UInt16)
    /// Something happened (at or above the node's `eventLevel`): the shell logs it, publishes it.
    case event(ClusterEvent)
}

public struct ClusterCounters: Sendable, Equatable {
    public var datagramsReceived = 0
    public var drops: [DropReason: Int] = [:]
    public var multicastSent = 0
    public var unicastSent = 0
    public var heartbeatDatagramsSent = 0
    public var mapChanges = 0
    /// Exit notices forwarded to binomial-graph neighbours (the repair of lost multicast copies).
    public var exitForwardsSent = 0
    /// Copies of an exit already reported (retransmissions, forwards, the other transport).
    public var duplicateExitNotices = 0
    /// Kernel-module exits reported by their first path and not again by the second.
    public var pairedKernelExits = 0
}

/// Pairs the two paths of one kernel-module exit — fdmod's immediate (which names only the node and
/// the tag) and the daemon's full notice — so that each exit is reported once, by whichever path
/// arrives first. Per (node, tag) it counts arrivals of each kind; an arrival pairs with an earlier
/// unpaired one of the other kind. Counts older than `window` since their last arrival are dropped,
/// and at most `capacity` (node, tag) pairs are kept (the oldest go first).
struct KernelExitPairing: Sendable {
    enum Path { case immediate, notice }
    struct Key: Hashable, Sendable {
        let node: IPAddress
        let tag: UInt16
    }
    struct Counts: Sendable {
        var immediate = 0
        var notice = 0
        var last: Instant
    }
    static let window = TimeSpan.seconds(10)
    static let capacity = 8192
    private var counts: [Key: Counts] = [:]
    private var order: [(key: Key, at: Instant)] = []
    private var head = 0

    /// Whether this arrival is the first report of its exit (false: it pairs with an earlier one).
    mutating func arrived(_ path: Path, node: IPAddress, tag: UInt16, now: Instant) -> Bool {
        expire(now: now)
        let key = Key(node: node, tag: tag)
        var c = counts[key] ?? Counts(last: now)
        let first: Bool
        switch path {
        case .immediate:
            first = c.immediate >= c.notice
            c.immediate += 1
        case .notice:
            first = c.notice >= c.immediate
            c.notice += 1
        }
        c.last = now
        counts[key] = c
        order.append((key, now))
        return first
    }

    private mutating func expire(now: Instant) {
        while head < order.count,
            order[head].at + Self.window <= now || counts.count > Self.capacity || order.count - head > 4 * Self.capacity
        {
            let (k, at) = order[head]
            head += 1
            if let c = counts[k], c.last == at { counts[k] = nil }
        }
        if head > 1024, head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }
}

/// One node's protocol: Discovery and Detector over one NodeMap, fed datagrams and clock ticks,
/// returning datagrams to send. Pure and deterministic; the daemon and the simulator both run it.
public struct ClusterNode: Sendable {
    // Stored properties in the order of their use by a datagram (Swift lays a struct out in
    // declaration order), so that a reader of thousands of nodes in turn (the simulator hands each
    // multicast to every node) can ask for the lines an input reads instead of all 2 kB of the
    // node: a repeated announce (`isRepeatedAnnounce`) reads `repeatBytes`, an input that changes
    // the map (a join, news) `changeRanges`.
    //
    // First: what every datagram reads and writes, then the map, whose look-up fields come first.
    private var out: [Effect] = []
    /// Authentication (nil: none): the keys, our next replay counter, the peers' replay windows.
    public private(set) var auth: AuthConfig?
    /// `config.cluster` and `config.me.address`, which every datagram is checked against, beside
    /// the other hot fields (`config`, last, is 360 bytes of settings that a datagram mostly does
    /// not read).
    private let clusterName: String
    private let selfAddress: IPAddress
    /// `counters.datagramsReceived`, here: every datagram counts.
    private var received = 0
    /// `discovery.started`, and whether discovery relays or has seen a relayed copy (so that
    /// `admit` has work: `DiscoveryCore.needsAdmission`), kept beside the hot fields: the head of
    /// `discovery` lies past the map. Set wherever discovery may change them (`start`, `stop`,
    /// `admit`).
    private var running = false
    private var admitting: Bool
    /// `config.recordDeaths`, read at every map change.
    private let recordDeaths: Bool
    /// Whether `detector` is set (fixed at init). Tested instead of `detector != nil`, which hands
    /// the comparison a copy of the whole core: on every datagram, that was 1-2 % of a simulation.
    private let detectorOn: Bool
    /// Events below this level are not produced (no value, no text): the daemon lowers it to debug
    /// while debug logging is on.
    public var eventLevel: LogLevel {
        didSet { detector?.eventLevel = eventLevel }
    }
    /// Whether the last datagram handed to `receive` was an announce that repeated what the map
    /// holds of a member (see `isRepeatedAnnounce`): it changed the time the member was last heard
    /// and the receive counter, nothing else; no timer moved, no member came or went. Valid right
    /// after `receive`; the simulator reads it to skip its per-input bookkeeping.
    public private(set) var lastInputWasRepeat = false
    public private(set) var map: NodeMap
    /// The counters but `datagramsReceived` (see `counters`).
    private var tallies = ClusterCounters()
    /// Our own exit notices still to be sent again (at `due`), `left` more times.
    private var exitResends: [(notice: ProcessExit, due: Instant, left: Int)] = []
    /// Exit notices to forward to our binomial-graph neighbours (but `except`, who sent it) at `due`.
    private var exitForwards: [(notice: ProcessExit, due: Instant, except: IPAddress?)] = []
    /// With `config.recordDeaths`: the nodes the map marked dead since the last `takeRecordedDeaths()`
    /// (the simulator asks after every input that was not a repeat).
    private var recordedDeaths: [(address: IPAddress, incarnation: UInt64)] = []
    public private(set) var discovery: DiscoveryCore
    public private(set) var detector: DetectorCore?

    // The rest.
    private var messageID: UInt32 = 0
    private var replayCounter: UInt64 = 0
    private var replay = ReplayGuard()
    /// Process exits already reported, by (node, pid, start time): each is reported once however
    /// many copies arrive (retransmissions, relays, both transports).
    private var exitsSeen = RecentSet<ProcessKey>(capacity: 8192)
    /// Exits the kernel module watched reach us twice — fdmod's immediate (node ID, tag) and the
    /// daemon's full notice (source `.kernel`) — and are reported once: the k-th of either kind for
    /// (node, tag) pairs with the k-th of the other kind within `kernelPairWindow`.
    private var kernelExits = KernelExitPairing()
    /// Last: the settings, read where the node starts and where it sends.
    public let config: ClusterConfig

    /// The bytes from the start of a node that hold every field a repeated announce reads or
    /// writes (besides the map's own storage): the fields before `map` and the map's look-up fields.
    public static let repeatBytes = offset(\.map) + NodeMap.lookupBytes
    /// The byte ranges that hold every field an input that changes the map (a join, news) reads or
    /// writes, with what `nextDeadlineInPlace` and `memberCountInPlace` read after it: everything
    /// up to the head of `discovery` (`DiscoveryCore.changeBytes`), and the head of `detector`.
    public static let changeRanges: (Range<Int>, Range<Int>) = (
        0..<offset(\.discovery) + DiscoveryCore.changeBytes,
        offset(\.detector)..<offset(\.detector) + DetectorCore.hotBytes
    )

    /// Every counter; `datagramsReceived` is kept apart (`received`), beside the hot fields.
    public var counters: ClusterCounters {
        var c = tallies
        c.datagramsReceived = received
        return c
    }

    private static func offset(_ field: PartialKeyPath<ClusterNode>) -> Int { MemoryLayout<ClusterNode>.offset(of: field)! }

    struct ProcessKey: Hashable, Sendable {
        let node: IPAddress
        let pid: UInt32
        let startTime: UInt64
    }

    /// How many times an exit notice is multicast in all, and how far apart: independent loss of
    /// all copies is p³ (8·10⁻⁶ at 2 %), without waiting for any repair round.
    public static let exitNoticeCopies = 3
    public var exitNoticeSpacing: TimeSpan { config.detector?.period ?? .milliseconds(150) }
    /// How long after an exit notice first reaches a node (or leaves its origin) that node forwards
    /// it to its binomial-graph neighbours: the repair round for receivers that lost every multicast
    /// copy. Deferred so that the forwards never compete with the first delivery.
    public static let exitForwardDelay = TimeSpan.milliseconds(20)

    public init(config: ClusterConfig, now: Instant) {
        self.config = config
        self.clusterName = config.cluster
        self.selfAddress = config.me.address
        self.recordDeaths = config.recordDeaths
        self.map = NodeMap(timeBaseUnixNanos: config.timeBaseUnixNanos, capacityHint: config.mapCapacityHint)
        self.discovery = DiscoveryCore(
            settings: config.discovery, me: config.me, incarnation: config.incarnation, seed: config.seed,
            detectorRunning: config.detector != nil)
        self.eventLevel = config.logLevel
        self.auth = config.auth
        self.admitting = self.discovery.relaying
        self.replayCounter = config.auth?.counterSeed ?? 0
        self.detectorOn = config.detector != nil
        if var d = config.detector {
            d.eventLevel = config.logLevel
            self.detector = DetectorCore(settings: d, selfAddress: config.me.address, now: now)
        }
    }

    public var address: IPAddress { selfAddress }
    public var incarnation: UInt64 { discovery.incarnation }
    public var isRunning: Bool { running }

    /// The earliest time `tick` must be called.
    public var nextDeadline: Instant {
        var copy = self
        return copy.nextDeadlineInPlace()
    }

    /// `nextDeadline`, for a node held in a class property (the simulator's slots): a mutating call
    /// works on the node in place, where a getter of this large struct, called across modules
    /// through a class property, is handed a copy of the whole node (8 % of a 2,000-node run).
    public mutating func nextDeadlineInPlace() -> Instant {
        var d = min(
            discovery.nextDeadlineInPlace(), exitResends.first?.due ?? .distantFuture, exitForwards.first?.due ?? .distantFuture)
        if detectorOn { d = min(d, detector!.nextDeadlineInPlace()) }
        return d
    }

    /// The map's member count, read in place (as `nextDeadlineInPlace`): the simulator reads it
    /// after every datagram, and `node.map.memberCount` through its slot copied the whole node.
    public mutating func memberCountInPlace() -> Int { map.memberCount }
    /// `map.forEachBrief(body)`, for a caller that holds the node in a class.
    public mutating func forEachBriefInPlace(_ body: (NodeBrief) throws -> Void) rethrows { try map.forEachBrief(body) }

    /// The nodes the map marked dead (a member or a left node turned dead, or a node added as
    /// dead) since the last call, with the incarnation marked; always empty unless
    /// `config.recordDeaths`. In place, as the readers above.
    public mutating func takeRecordedDeaths() -> [(address: IPAddress, incarnation: UInt64)] {
        if recordedDeaths.isEmpty { return [] }
        let d = recordedDeaths
        recordedDeaths = []
        return d
    }

    /// `map.prefetch(address, step:)`, in place.
    /// Returns `map.prefetch`'s guess that the map does not hold `address` (at step 1).
    @discardableResult
    public mutating func prefetch(_ address: IPAddress, step: Int) -> Bool { map.prefetch(address, step: step) }

    /// `map.brief(address)`, read in place.
    public mutating func briefInPlace(_ address: IPAddress) -> NodeBrief? { map.briefInPlace(address) }

    /// The death counters (detector declared and learned, discovery expired), read in place.
    public mutating func deathMarksInPlace() -> (declared: Int, learned: Int, expired: Int) {
        let d = detectorOn ? detector!.stats : nil
        return (d?.deathsDeclared ?? 0, d?.deathsLearned ?? 0, discovery.stats.expired)
    }

    // MARK: Inputs

    public mutating func start(now: Instant) -> [Effect] {
        let d = discovery.start(now: now, map: &map)
        running = discovery.started
        apply(d, now: now)
        return flush()
    }

    public mutating func tick(now: Instant) -> [Effect] {
        guard running else { return [] }
        resendExits(now: now)
        forwardExits(now: now)
        apply(discovery.tick(now: now, map: &map), now: now)
        if detectorOn {
            let o = detector!.tick(now: now, map: &map)
            applyDetector(o, now: now)
        }
        return flush()
    }

    /// This node's own receive sockets dropped `dropped` datagrams by `now` (the shell reads the
    /// kernel's count): the detector gives a suspect's answers one more chance (`lossGrace`).
    public mutating func localLoss(dropped: Int, now: Instant) {
        if detectorOn { detector!.localLoss(dropped: dropped, now: now) }
    }

    public mutating func stop(now: Instant) -> [Effect] {
        apply(discovery.stop(now: now, map: &map), now: now)
        running = discovery.started
        return flush()
    }

    /// Our interface addresses changed.
    public mutating func interfacesChanged(aliases: [Alias], now: Instant) -> [Effect] {
        apply(discovery.interfacesChanged(aliases: aliases, now: now, map: &map), now: now)
        return flush()
    }

    /// New cluster keys (the key file was reloaded): signs with the new primary from now on, accepts
    /// every key of the new ring. Replay windows are kept.
    public mutating func setKeyring(_ keyring: Keyring) {
        auth?.keyring = keyring
    }

    /// This node's transport endpoints changed (the RDMA transport came up, moved or went down).
    public mutating func capabilitiesChanged(_ capabilities: [Capability], now: Instant) -> [Effect] {
        apply(discovery.capabilitiesChanged(capabilities, now: now, map: &map), now: now)
        return flush()
    }

    /// An immediate-only RDMA datagram (no payload) arrived on the cluster group: a process-exit
    /// notice as the kernel module fdmod sends it, `ProcessNotice` layout (docs/PROTOCOL.md). It is
    /// decoded against the map; one that names no node of the map is counted and dropped.
    public mutating func receiveImmediate(_ value: UInt32, now: Instant) -> [Effect] {
        guard running else { return [] }
        received += 1
        if let a = auth, !a.trustImmediates {
            // 32 bits leave no room for a tag: with keys, only a fabric the admin trusts may speak.
            drop(.unauthenticated, from: nil)
            return flush()
        }
        let notice = ProcessNotice(immediate: value)
        guard let id = NodeID(rawValue: notice.nodeID), let n = map.node(id: id) else {
            drop(.unknownNotice, from: nil)
            return flush()
        }
        if kernelExits.arrived(.immediate, node: n.address, tag: notice.tag, now: now) {
            emit(.processNotice(node: n.address, id: id, tag: notice.tag))
        } else {
            tallies.pairedKernelExits += 1
        }
        return flush()
    }

    /// A watched process on this node exited: every node is told at once (multicast, then again
    /// `exitNoticeCopies - 1` times `exitNoticeSpacing` apart) and the event is reported here too.
    /// `source` says who watched it: the daemon, or the kernel module (whose immediate notice of the
    /// same exit may arrive too; see `kernelExits`).
    public mutating func processExited(
        pid: UInt32, startTime: UInt64, status: Int32, tag: UInt16, source: ProcessExit.Source = .daemon, name: String,
        now: Instant
    ) -> [Effect] {
        guard running else { return [] }
        let p = ProcessExit(
            node: config.me.address, pid: pid, startTime: startTime, status: status, tag: tag, source: source, name: name)
        // The datagram first: the shell carries effects out in order, and the other nodes wait.
        sendExit(p)
        if exitsSeen.insert(ProcessKey(node: p.node, pid: pid, startTime: startTime)) {
            report(p, now: now)
        }
        if Self.exitNoticeCopies > 1 {
            exitResends.append((p, now + exitNoticeSpacing, Self.exitNoticeCopies - 1))
        }
        scheduleForward(p, except: nil, now: now)
        return flush()
    }

    /// The first copy of an exit here: reported, unless the kernel module's immediate for it came first.
    private mutating func report(_ p: ProcessExit, now: Instant) {
        if p.source == .kernel, !kernelExits.arrived(.notice, node: p.node, tag: p.tag, now: now) {
            tallies.pairedKernelExits += 1
            return
        }
        emit(.processExited(p))
    }

    private mutating func scheduleForward(_ p: ProcessExit, except: IPAddress?, now: Instant) {
        guard detectorOn, exitForwards.count < Self.maxPendingForwards else { return }
        exitForwards.append((p, now + Self.exitForwardDelay, except))
    }

    /// Bound on exit notices waiting for their forward (a burst of exits beyond it is still multicast).
    static let maxPendingForwards = 4096

    private mutating func forwardExits(now: Instant) {
        guard let first = exitForwards.first, first.due <= now, let d = detector else { return }
        let n = exitForwards.prefix { $0.due <= now }.count
        let due = exitForwards.prefix(n)
        exitForwards.removeFirst(n)
        let neighbours = d.bmgNeighbours(in: map)
        for f in due {
            guard let bytes = encode(.processExit(f.notice)) else { continue }
            for to in neighbours where to != f.except && to != f.notice.node {
                guard let port = map.brief(to)?.heartbeatPort, port != 0 else { continue }
                out.append(.heartbeat(bytes, to: to, port: port))
                tallies.exitForwardsSent += 1
            }
        }
    }

    private mutating func sendExit(_ p: ProcessExit) {
        if let bytes = encode(.processExit(p)) {
            out.append(.multicast(bytes, except: nil))
            tallies.multicastSent += 1
        }
    }

    private mutating func resendExits(now: Instant) {
        guard let first = exitResends.first, first.due <= now else { return }
        var keep: [(notice: ProcessExit, due: Instant, left: Int)] = []
        for var r in exitResends {
            if r.due <= now {
                sendExit(r.notice)
                r.left -= 1
                r.due = now + exitNoticeSpacing
                if r.left > 0 { keep.append(r) }
            } else {
                keep.append(r)
            }
        }
        exitResends = keep.sorted { $0.due < $1.due }
    }

    /// A datagram arrived on cluster interface `interface` (index into the shell's interface list).
    public mutating func receive(_ bytes: [UInt8], interface: Int, now: Instant) -> [Effect] {
        lastInputWasRepeat = false
        guard running else { return [] }
        received += 1
        let m: Message
        do {
            m = try Message.decode(bytes)
        } catch let e as DecodeError {
            drop(DropReason(e), from: nil)
            return flush()
        } catch {
            drop(.malformed, from: nil)
            return flush()
        }
        return process(m, bytes, interface: interface, now: now)
    }

    /// `receive(bytes)` for a datagram already decoded from `bytes`: the simulator decodes a
    /// multicast once for all its receivers (decoding is a pure function of the bytes).
    public mutating func receive(_ m: Message, bytes: [UInt8], interface: Int, now: Instant) -> [Effect] {
        lastInputWasRepeat = false
        guard running else { return [] }
        received += 1
        return process(m, bytes, interface: interface, now: now)
    }

    private mutating func process(_ m: Message, _ bytes: [UInt8], interface: Int, now: Instant) -> [Effect] {
        let h = m.header
        guard h.cluster == clusterName else {
            drop(.otherCluster, from: h.origin)
            return flush()
        }
        if let a = auth {
            // Verified before anything else looks at it: no key, no map work.
            guard h.flags.contains(.authenticated) else {
                drop(.unauthenticated, from: h.origin)
                return flush()
            }
            guard let key = a.keyring.key(id: h.keyID) else {
                drop(.unknownKey, from: h.origin)
                return flush()
            }
            // A counter already seen cannot be fresh whatever the tag: refused before the HMAC.
            guard replay.peek(origin: h.origin, keyID: h.keyID, counter: h.replayCounter) == .fresh else {
                drop(.replayed, from: h.origin)
                return flush()
            }
            guard Seal.verify(bytes, key: key) else {
                drop(.badTag, from: h.origin)
                return flush()
            }
            guard replay.check(origin: h.origin, keyID: h.keyID, counter: h.replayCounter) == .fresh else {
                drop(.replayed, from: h.origin)
                return flush()
            }
        } else if h.flags.contains(.authenticated) {
            // Tagged, and this node has no key to check it: refused.
            drop(.unverifiableTag, from: h.origin)
            return flush()
        }
        guard h.origin != selfAddress else {
            inOurName(m, now: now)
            return flush()
        }
        let known = map.briefInPlace(h.origin)
        if let known, h.incarnation < known.incarnation, !h.type.speaksForItself || known.state.isMember {
            // An older life of the sender (a delayed datagram, a replay): it says nothing about the
            // node now, and must neither refresh it nor clear a suspicion of it. Its own announce,
            // join or leave goes on to discovery only while we hold the node dead or left: then a
            // live node below our incarnation (it restarted after its clock stepped back and lost
            // its map file) is told to refute past it. While we hold it a member at a higher
            // incarnation, the newer life speaks for it.
            drop(.staleIncarnation, from: h.origin)
            return flush()
        }
        if DiscoveryCore.needsAdmission(m, relaying: admitting) {
            let (process, relay) = discovery.admit(m, interface: interface, now: now)
            admitting = discovery.relaying
            if case .relay(let fwd, let except)? = relay {
                // The datagram as it came, one hop further: its tag (hops are not covered) stays valid.
                var copy = bytes
                copy[Seal.hopsOffset] = fwd.header.hops
                out.append(.multicast(copy, except: except))
                tallies.multicastSent += 1
            }
            guard process else { return flush() }
        }
        if let known, isRepeatedAnnounce(m, of: known, now: now) {
            lastInputWasRepeat = true
            return flush()
        }
        var sender = known
        if let known, known.state.isMember, h.incarnation > known.incarnation, !h.type.speaksForItself {
            // A refutation or restart whose announce was lost here: take the incarnation.
            mapChanged(map.heardAtIncarnation(h.origin, h.incarnation, now: now), now: now)
            sender = map.briefInPlace(h.origin)
        }
        if eventLevel <= .debug && h.type != .heartbeat {
            emit(.received(type: h.type, origin: h.origin, hops: h.hops, incarnation: h.incarnation, interface: interface))
        }
        switch m.body {
        case .announce, .join, .leave, .mapSync, .syncRequest, .syncEntries, .offer:
            apply(discovery.receive(m, sender: sender, now: now, map: &map), now: now)
        case .heartbeat, .watch, .probe, .probeAck, .probeRequest, .suspect, .dead, .deaths:
            if h.type != .dead && h.type != .deaths { map.touch(h.origin, now: now) }
            if detectorOn {
                let o = detector!.receive(m.body, from: h.origin, originIncarnation: h.incarnation, now: now, map: &map)
                applyDetector(o, now: now)
            } else {
                // Without a detector an accusation of us is still refuted, so that stale deaths heal.
                switch m.body {
                case .suspect(let target, let inc) where target == config.me.address && inc >= discovery.incarnation:
                    refute(.suspect, by: h.origin, past: inc, now: now)
                case .dead(let target, let inc, _) where target == config.me.address && inc >= discovery.incarnation:
                    refute(.dead, by: h.origin, past: inc, now: now)
                case .deaths(let ns):
                    if let n = ns.first(where: { $0.target == config.me.address && $0.targetIncarnation >= discovery.incarnation }) {
                        refute(.dead, by: h.origin, past: n.targetIncarnation, now: now)
                    }
                default:
                    break
                }
            }
            if case .heartbeat(_, _, let members, let digest) = m.body {
                apply(discovery.heardDigest(from: h.origin, members: members, digest: digest, now: now, map: map), now: now)
            }
        case .processExit(let p):
            if exitsSeen.insert(ProcessKey(node: p.node, pid: p.pid, startTime: p.startTime)) {
                report(p, now: now)
                scheduleForward(p, except: h.origin, now: now)
            } else {
                tallies.duplicateExitNotices += 1
            }
        }
        return flush()
    }

    /// An announce that says again what the map holds of a member (the periodic announce, a wave's
    /// second and third copies: most of what a node hears in a restart storm), handled by recording
    /// the time heard (`NodeMap.refreshRepeat`). Discovery would do the same and nothing else: it
    /// notes news and answers revivals only for non-members, and the map's `observe` takes this
    /// very path for a repeated claim. Not while debug events are on (each input is then an event).
    @inline(__always)
    private mutating func isRepeatedAnnounce(_ m: Message, of known: NodeBrief, now: Instant) -> Bool {
        guard case .announce(let info) = m.body, known.state.isMember, known.incarnation == m.header.incarnation,
            eventLevel > .debug
        else { return false }
        return map.refreshRepeat(DiscoveryCore.claim(m.header, info), now: now)
    }

    /// A datagram with our own address as its origin. Our own multicast that came back through a
    /// gateway is dropped; anything that speaks for us and that we did not say (a leave while we
    /// run, an announce at an incarnation we never had) is contradicted at once: we refute past it,
    /// so that no map keeps it for more than a round trip.
    private mutating func inOurName(_ m: Message, now: Instant) {
        let h = m.header
        switch m.body {
        case .leave where h.incarnation >= discovery.incarnation:
            refute(.leave, by: nil, past: h.incarnation, now: now)
        case .announce where h.incarnation > discovery.incarnation,
            .join where h.incarnation > discovery.incarnation:
            refute(.impersonation, by: nil, past: h.incarnation, now: now)
        default:
            drop(.own, from: h.origin)
        }
    }

    private mutating func refute(
        _ accusation: DetectorEvent.Accusation, by: IPAddress?, past: UInt64, now: Instant
    ) {
        let before = discovery.incarnation
        apply(discovery.refute(past: past, now: now, map: &map), now: now)
        emit(.refuted(accusation: accusation, by: by, past: past, from: before, to: discovery.incarnation))
    }

    /// A datagram the shell refused before it reached the node (a source outside --allow-from):
    /// counted with the node's drops.
    public mutating func refused(_ reason: DropReason, from: IPAddress?) {
        received += 1
        drop(reason, from: from)
        out.removeAll(keepingCapacity: true)
    }

    // MARK: Plumbing

    private mutating func drop(_ reason: DropReason, from: IPAddress?) {
        tallies.drops[reason, default: 0] += 1
        if eventLevel <= .debug { emit(.dropped(reason, from: from)) }
    }

    private mutating func emit(_ e: ClusterEvent) {
        if e.level >= eventLevel { out.append(.event(e)) }
    }

    private mutating func flush() -> [Effect] {
        // Most inputs have no effect. Handing `out` over and then emptying it "keeping capacity"
        // allocated a fresh buffer for every input, since the returned array shares the old one.
        if out.isEmpty { return [] }
        let effects = out
        out = []
        return effects
    }

    private mutating func header(_ type: MessageType) -> Header {
        messageID &+= 1
        var flags: HeaderFlags = []
        if config.me.explicitID { flags.insert(.explicitID) }
        var keyID: UInt32 = 0
        var counter: UInt64 = 0
        if let a = auth {
            flags.insert(.authenticated)
            keyID = a.keyring.primary.id
            replayCounter &+= 1
            counter = replayCounter
        }
        return Header(
            type: type, flags: flags, cluster: config.cluster, senderID: config.me.preferredID?.rawValue ?? 0,
            incarnation: discovery.incarnation, messageID: messageID, keyID: keyID, replayCounter: counter,
            origin: config.me.address)
    }

    private mutating func encode(_ body: Body) -> [UInt8]? {
        let m = Message(header: header(body.type), body: body)
        do {
            var bytes = try m.encode()
            if let a = auth { Seal.sign(&bytes, key: a.keyring.primary) }
            return bytes
        } catch {
            emit(.encodeFailed(type: body.type, reason: "\(error)"))
            return nil
        }
    }

    private mutating func apply(_ outputs: [DiscoveryOutput], now: Instant) {
        for o in outputs {
            switch o {
            case .multicast(let b):
                if let bytes = encode(b) {
                    out.append(.multicast(bytes, except: nil))
                    tallies.multicastSent += 1
                }
            case .unicast(let b, let to):
                if let bytes = encode(b) {
                    out.append(.unicast(bytes, to: to))
                    tallies.unicastSent += 1
                }
            case .relay:
                // Relays come only from `admit`, and `receive` forwards the datagram as it came (its
                // tag intact); a re-encoded copy would carry no valid tag.
                break
            case .changes(let c):
                mapChanged(c, now: now)
            case .event(let e):
                emit(.discovery(e))
            case .refute(let state, let by, let past):
                refute(state == .left ? .leave : .dead, by: by, past: past, now: now)
            }
        }
    }

    private mutating func applyDetector(_ outputs: [DetectorOutput], now: Instant) {
        for o in outputs {
            switch o {
            case .send(let b, let to, let port):
                if let bytes = encode(b) {
                    out.append(.heartbeat(bytes, to: to, port: port))
                    tallies.heartbeatDatagramsSent += 1
                }
            case .multicast(let b):
                if let bytes = encode(b) {
                    out.append(.multicast(bytes, except: nil))
                    tallies.multicastSent += 1
                }
            case .changes(let c):
                mapChanged(c, now: now, fromDetector: true)
            case .refute(let accusation, let by, let past):
                refute(accusation, by: by, past: past, now: now)
            case .event(let e):
                emit(.detector(e))
            }
        }
    }

    private mutating func mapChanged(_ changes: [NodeMapChange], now: Instant, fromDetector: Bool = false) {
        guard !changes.isEmpty else { return }
        tallies.mapChanges += changes.count
        for c in changes {
            emit(.member(c))
            guard recordDeaths else { continue }
            switch c {
            case .stateChanged(let a, _, _, .dead, let inc): recordedDeaths.append((a, inc))
            case .added(let n) where n.state == .dead: recordedDeaths.append((n.address, n.incarnation))
            default: break
            }
        }
        let ringChanged = changes.contains { c in
            switch c {
            case .updated: return false
            default: return true
            }
        }
        // The skip test first, from two counters: handing `map` to the detector copies it.
        if ringChanged, detectorOn, !detector!.skipsRing(changes, changeTotal: map.changeTotal, generation: map.generation) {
            applyDetector(detector!.mapChanged(map, now: now), now: now)
        }
    }
}

extension MessageType {
    /// Messages in which a node speaks for itself, whatever incarnation it had before: a restarted
    /// node's announce and join (its incarnation may be below what peers remember, and discovery
    /// answers those), and its leave.
    var speaksForItself: Bool {
        switch self {
        case .announce, .join, .leave: true
        default: false
        }
    }
}
