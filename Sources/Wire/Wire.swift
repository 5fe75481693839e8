import NodeMap

/// The discd datagram format, version 2 (docs/PROTOCOL.md; version 2 added the map digest to the
/// heartbeat and the anti-entropy messages 13-15). One datagram carries one message,
/// over UDP (IPv4/IPv6 multicast or unicast) or RDMA UD multicast alike, and is at most
/// `maxDatagram` bytes so that it fits any path MTU of 1280 (IPv6 minimum) with headers.
public enum Wire {
    public static let magic: UInt16 = 0xD15C
    public static let version: UInt8 = 2
    public static let maxDatagram = 1200
    public static let fixedHeader = 52
    public static let maxClusterName = 32
    public static let tagLength = 16
    /// Hop limit for relayed messages: a relay never forwards a message that has made this many hops.
    public static let maxHops: UInt8 = 8
    /// Notices in one `deaths` datagram: 26 bytes each, with the largest header and a tag.
    public static let deathsPerDatagram = 40
}

/// Message types. Values are stable on the wire; unknown values are counted and dropped.
public enum MessageType: UInt8, Sendable, CaseIterable {
    case announce = 1
    case join = 2
    case leave = 3
    case mapSync = 4
    case heartbeat = 5
    case probeRequest = 6
    case probe = 7
    case probeAck = 8
    case suspect = 9
    case dead = 10
    case processExit = 11
    case watch = 12
    /// Anti-entropy: "these are my digest buckets, send me the entries where yours differ".
    case syncRequest = 13
    /// Anti-entropy: entries (members and tombstones) of whole digest buckets.
    case syncEntries = 14
    /// A settled node tells a newcomer it may pull the map from it.
    case offer = 15
    /// Several death notices in one datagram: the circulant-graph broadcast of many deaths at once.
    case deaths = 16

    /// Messages that are multicast and that gateways relay between networks.
    public var isRelayed: Bool {
        switch self {
        case .announce, .join, .leave, .dead, .processExit: return true
        default: return false
        }
    }
}

public struct HeaderFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A 16-byte authentication tag follows the body (cluster keys; see docs/PROTOCOL.md).
    public static let authenticated = HeaderFlags(rawValue: 1)
    /// The sender's preferred ID is configured explicitly.
    public static let explicitID = HeaderFlags(rawValue: 2)
    public static let known: HeaderFlags = [.authenticated, .explicitID]
}

/// Fields every datagram carries.
public struct Header: Hashable, Sendable {
    public var type: MessageType
    public var flags: HeaderFlags
    /// Gateways this message has crossed.
    public var hops: UInt8
    public var cluster: String
    /// The originator's claimed ID (0 = none).
    public var senderID: UInt16
    public var incarnation: UInt64
    /// Per-originator sequence number; (origin, messageID) identifies a message for relay dedup.
    public var messageID: UInt32
    /// Cluster key in use (0 = unauthenticated).
    public var keyID: UInt32
    /// Strictly increasing per (origin, key) on authenticated datagrams; 0 otherwise.
    public var replayCounter: UInt64
    /// The originator's primary address (kept unchanged by relays).
    public var origin: IPAddress

    public init(
        type: MessageType, flags: HeaderFlags = [], hops: UInt8 = 0, cluster: String, senderID: UInt16,
        incarnation: UInt64, messageID: UInt32, keyID: UInt32 = 0, replayCounter: UInt64 = 0, origin: IPAddress
    ) {
        self.type = type
        self.flags = flags
        self.hops = hops
        self.cluster = cluster
        self.senderID = senderID
        self.incarnation = incarnation
        self.messageID = messageID
        self.keyID = keyID
        self.replayCounter = replayCounter
        self.origin = origin
    }
}

/// What a node says about itself in announce and join.
public struct NodeInfo: Hashable, Sendable {
    /// Other addresses of the node (multi-homed, gateway, routed interfaces).
    public var aliases: [Alias]
    public var heartbeatPort: UInt16
    /// The sender's current announce interval, so receivers know when to expect the next one.
    public var announceIntervalMillis: UInt32
    public var capabilities: [Capability]

    public init(aliases: [Alias] = [], heartbeatPort: UInt16 = 0, announceIntervalMillis: UInt32 = 1000, capabilities: [Capability] = []) {
        self.aliases = aliases
        self.heartbeatPort = heartbeatPort
        self.announceIntervalMillis = announceIntervalMillis
        self.capabilities = capabilities
    }
}

/// One node in a map-sync answer.
public struct SyncEntry: Hashable, Sendable {
    public var address: IPAddress
    public var preferredID: UInt16
    public var explicitID: Bool
    public var state: NodeState
    public var incarnation: UInt64
    public var heartbeatPort: UInt16
    public var aliases: [Alias]
    /// Gateway hops between the sender and the node when the sender last heard it.
    public var hops: UInt8
    /// How long ago the sender last heard the node (ms, saturating): the receiver stamps the entry
    /// as heard that long ago, not now, so a sync cannot lend a silent node a fresh lifetime.
    public var ageMillis: UInt32

    public init(
        address: IPAddress, preferredID: UInt16, explicitID: Bool, state: NodeState, incarnation: UInt64,
        heartbeatPort: UInt16, aliases: [Alias], hops: UInt8 = 0, ageMillis: UInt32 = 0
    ) {
        self.hops = hops
        self.ageMillis = ageMillis
        self.address = address
        self.preferredID = preferredID
        self.explicitID = explicitID
        self.state = state
        self.incarnation = incarnation
        self.heartbeatPort = heartbeatPort
        self.aliases = aliases
    }

    /// The entry for `n` as seen at `now` (same clock as `n.lastHeard`).
    public init(_ n: Node, now: Instant) {
        let age = (now - n.lastHeard).nanos / 1_000_000
        self.init(
            address: n.address, preferredID: n.preferredID?.rawValue ?? 0, explicitID: n.explicitID, state: n.state,
            incarnation: n.incarnation, heartbeatPort: n.heartbeatPort, aliases: n.aliases, hops: n.hops,
            ageMillis: UInt32(clamping: age))
    }

    /// Smallest encoded entry (no aliases).
    public static let minEncodedSize = 36
    /// Encoded size: address 16, preferred 2, flags 1, state 1, incarnation 8, port 2, hops 1, age 4,
    /// aliasCount 1, aliases 17 each.
    public var encodedSize: Int { Self.minEncodedSize + 17 * aliases.count }
}

/// An anti-entropy request (type 13).
public struct SyncRequest: Hashable, Sendable {
    public var session: UInt32
    public var salt: UInt32
    public var flags: Flags
    /// `NodeMap.saltedBucketSums(salt:)`: exactly `NodeMap.digestBuckets` bytes.
    public var sums: [UInt8]

    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// A newcomer pulling a whole map after an offer.
        public static let pull = Flags(rawValue: 1)
        public static let known: Flags = [.pull]
    }

    public init(session: UInt32, salt: UInt32, flags: Flags = [], sums: [UInt8]) {
        self.session = session
        self.salt = salt
        self.flags = flags
        self.sums = sums
    }
    public static let encodedSize = 4 + 4 + 1 + NodeMap.digestBuckets
}

/// Entries of whole digest buckets (type 14).
public struct SyncEntries: Hashable, Sendable {
    public var session: UInt32
    public var flags: Flags
    /// Buckets whose entries (of the sender's map) this datagram carries completely.
    public var covered: [UInt16]
    public var entries: [SyncEntry]

    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// An answer to a request (the receiver pushes back what it holds and the sender lacks).
        public static let reply = Flags(rawValue: 1)
        /// The last datagram of an answer.
        public static let last = Flags(rawValue: 2)
        /// The answer was cut at its size bound: more buckets differ, ask again.
        public static let more = Flags(rawValue: 4)
        public static let known: Flags = [.reply, .last, .more]
    }

    public init(session: UInt32, flags: Flags, covered: [UInt16], entries: [SyncEntry]) {
        self.session = session
        self.flags = flags
        self.covered = covered
        self.entries = entries
    }
    /// Fixed part: session 4, flags 1, covered count 2, entry count 2.
    public static let fixedSize = 9
    public var encodedSize: Int { Self.fixedSize + 2 * covered.count + entries.reduce(0) { $0 + $1.encodedSize } }
}

/// The 32-bit immediate of an RDMA immediate-only send (the kernel module fdmod's process-exit
/// notice): the sending node's ID in the high 16 bits, the watched process's tag in the low 16.
public struct ProcessNotice: Hashable, Sendable {
    public var nodeID: UInt16
    public var tag: UInt16
    public init(nodeID: UInt16, tag: UInt16) {
        self.nodeID = nodeID
        self.tag = tag
    }
    public init(immediate: UInt32) {
        self.nodeID = UInt16(truncatingIfNeeded: immediate >> 16)
        self.tag = UInt16(truncatingIfNeeded: immediate)
    }
    public var immediate: UInt32 { UInt32(nodeID) << 16 | UInt32(tag) }
}

/// A process on `node` that opted in has exited (design for the process-failure issue).
public struct ProcessExit: Hashable, Sendable {
    public var node: IPAddress
    public var pid: UInt32
    /// Process start time (clock ticks since boot, as /proc/PID/stat field 22): with the pid, unique.
    public var startTime: UInt64
    /// Wait status as waitpid reports it (-1: not known, the process was reaped before discd read it).
    public var status: Int32
    /// The watch tag the process was opted in with (0 = none).
    public var tag: UInt16
    /// Who watched it: the daemon (a pidfd) or the kernel module `heartbeat` (whose `fdmod` may also
    /// have sent the immediate-only RDMA notice for the same exit: receivers report one of the two).
    public var source: Source
    public var name: String

    public enum Source: UInt8, Hashable, Sendable {
        case daemon = 0
        case kernel = 1
    }

    public init(node: IPAddress, pid: UInt32, startTime: UInt64, status: Int32, tag: UInt16 = 0, source: Source = .daemon, name: String) {
        self.node = node
        self.pid = pid
        self.startTime = startTime
        self.status = status
        self.tag = tag
        self.source = source
        self.name = name
    }

    /// The exit code when the process exited normally.
    public var exitCode: Int? { status >= 0 && status & 0x7F == 0 ? Int((status >> 8) & 0xFF) : nil }
    /// The signal that killed it.
    public var signal: Int? { status >= 0 && status & 0x7F != 0 && status & 0x7F != 0x7F ? Int(status & 0x7F) : nil }
}

public enum Body: Hashable, Sendable {
    case announce(NodeInfo)
    case join(NodeInfo)
    case leave
    /// Answer to a join: part `part` of `parts` of the sender's map.
    case mapSync(part: UInt16, parts: UInt16, entries: [SyncEntry])
    /// Sent every period η to the observer(s); `period` lets the observer check its own drift;
    /// `members` and `digest` are the sender's map digest (anti-entropy: a receiver whose digest
    /// differs pulls the difference).
    case heartbeat(sequence: UInt32, periodMillis: UInt16, members: UInt16 = 0, digest: UInt64 = 0)
    /// "Probe `target` for me" (indirect probe, SWIM-style).
    case probeRequest(target: IPAddress, targetIncarnation: UInt64, nonce: UInt32)
    /// A probe of the receiver on behalf of `requester`.
    case probe(requester: IPAddress, nonce: UInt32)
    /// The answer to a probe; `target` is the probed node; forwarded by a helper to the requester.
    case probeAck(target: IPAddress, targetIncarnation: UInt64, nonce: UInt32)
    /// "I suspect you": the receiver answers with a heartbeat (at its own incarnation) or refutes
    /// (above it).
    case suspect(target: IPAddress, targetIncarnation: UInt64)
    /// A confirmed death, spread by multicast and the circulant-graph broadcast; also the unicast
    /// answer to a node speaking at an incarnation the sender holds dead or left (it refutes).
    case dead(target: IPAddress, targetIncarnation: UInt64, targetID: UInt16)
    case processExit(ProcessExit)
    /// "I observe you: send me heartbeats."
    case watch
    /// Anti-entropy request: the sender's digest bucket sums, each folded to a byte with `salt`.
    /// The receiver answers with `syncEntries` for the buckets where its own folded sum differs.
    case syncRequest(SyncRequest)
    /// Entries of whole digest buckets (`covered`): an answer to a `syncRequest`, or the
    /// requester's own entries pushed back for the covered buckets where the two maps still differ.
    case syncEntries(SyncEntries)
    /// "You may pull my map": a settled node's answer to a join (the newcomer pulls from one).
    case offer(members: UInt16, digest: UInt64)
    /// 1 to `Wire.deathsPerDatagram` death notices, each as `dead` would carry it: a node forwarding
    /// many deaths at once (a partition, a rack lost) sends them together.
    case deaths([DeathNotice])

    public var type: MessageType {
        switch self {
        case .announce: .announce
        case .join: .join
        case .leave: .leave
        case .mapSync: .mapSync
        case .heartbeat: .heartbeat
        case .probeRequest: .probeRequest
        case .probe: .probe
        case .probeAck: .probeAck
        case .suspect: .suspect
        case .dead: .dead
        case .processExit: .processExit
        case .watch: .watch
        case .syncRequest: .syncRequest
        case .syncEntries: .syncEntries
        case .offer: .offer
        case .deaths: .deaths
        }
    }
}

/// One death notice: the fields of `Body.dead`.
public struct DeathNotice: Hashable, Sendable {
    public var target: IPAddress
    public var targetIncarnation: UInt64
    public var targetID: UInt16

    public init(target: IPAddress, targetIncarnation: UInt64, targetID: UInt16) {
        self.target = target
        self.targetIncarnation = targetIncarnation
        self.targetID = targetID
    }
}

public struct Message: Hashable, Sendable {
    public var header: Header
    public var body: Body
    public init(header: Header, body: Body) {
        self.header = header
        self.body = body
    }
}

/// Why a datagram was dropped; each reason has its own counter in the daemon.
public enum DecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    case tooShort(Int)
    case tooLong(Int)
    case badMagic
    case unsupportedVersion(UInt8)
    case unknownType(UInt8)
    case unknownFlags(UInt8)
    case badClusterName
    case lengthMismatch
    case malformedBody(String)
    case missingTag

    public var description: String {
        switch self {
        case .tooShort(let n): "datagram of \(n) bytes is shorter than a header"
        case .tooLong(let n): "datagram of \(n) bytes exceeds \(Wire.maxDatagram)"
        case .badMagic: "bad magic"
        case .unsupportedVersion(let v): "unsupported protocol version \(v)"
        case .unknownType(let t): "unknown message type \(t)"
        case .unknownFlags(let f): "unknown header flags \(f)"
        case .badClusterName: "bad cluster name"
        case .lengthMismatch: "body length does not match datagram length"
        case .malformedBody(let r): "malformed body: \(r)"
        case .missingTag: "authenticated flag without room for a tag"
        }
    }

    /// A short stable name for counters.
    public var counterName: String {
        switch self {
        case .tooShort: "too_short"
        case .tooLong: "too_long"
        case .badMagic: "bad_magic"
        case .unsupportedVersion: "bad_version"
        case .unknownType: "unknown_type"
        case .unknownFlags: "unknown_flags"
        case .badClusterName: "bad_cluster"
        case .lengthMismatch: "bad_length"
        case .malformedBody: "malformed"
        case .missingTag: "missing_tag"
        }
    }
}

public enum EncodeError: Error, Hashable, Sendable {
    case tooLarge(Int)
    case clusterNameTooLong
    /// A `deaths` body holds 1 to `Wire.deathsPerDatagram` notices.
    case deathNoticeCount(Int)
}
