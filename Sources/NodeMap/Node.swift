/// A node number in the cluster: 1...65535, as openMosix numbers them; 0 is invalid.
public struct NodeID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16

    /// nil for 0, which is never a valid node ID.
    public init?(rawValue: UInt16) {
        guard rawValue != 0 else { return nil }
        self.rawValue = rawValue
    }

    /// For values known to be 1...65535 (an ID the map assigned).
    @inline(__always) init(unchecked rawValue: UInt16) { self.rawValue = rawValue }

    public init?(_ value: Int) {
        guard value >= 1, value <= 65535 else { return nil }
        self.rawValue = UInt16(value)
    }

    /// The ID omdiscd would give an address: the last two octets of an IPv4 address
    /// (`192.168.10.220` → 10·256+220 = 2780); for IPv6, the low 16 bits of the interface identifier.
    /// nil when those bits are zero (e.g. `10.1.0.0`): such a node gets a substitute ID.
    public static func derived(from address: IPAddress) -> NodeID? {
        NodeID(rawValue: UInt16(truncatingIfNeeded: address.lo))
    }

    public var description: String { String(rawValue) }
    public static func < (a: NodeID, b: NodeID) -> Bool { a.rawValue < b.rawValue }
}

/// Membership state of a node; transitions are alive → suspect → dead and alive/suspect → left
/// (after Kerrighed's hotplug layer). A higher incarnation brings a dead or left node back alive.
public enum NodeState: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case alive = 1
    case suspect = 2
    case dead = 3
    case left = 4

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .left: "left"
        }
    }

    /// Alive and suspect nodes are members: they sit on the detector's ring.
    public var isMember: Bool { self == .alive || self == .suspect }
}

/// How an alias address of a node was learned.
public enum AliasSource: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The node announced it as another address of its own (multi-homed host, gateway).
    case interface = 1
    /// The node reaches us through routed multicast (`-m TTL`); its other interfaces are aliases.
    case routed = 2
    /// Read from a static map (mosix.map ALIAS line).
    case configured = 3

    public var description: String {
        switch self {
        case .interface: "interface"
        case .routed: "routed"
        case .configured: "configured"
        }
    }
}

public struct Alias: Hashable, Sendable {
    public var address: IPAddress
    public var source: AliasSource
    public init(_ address: IPAddress, source: AliasSource) {
        self.address = address
        self.source = source
    }
}

/// A transport capability a node advertises (room for the RDMA path and later transports).
public enum Capability: Hashable, Sendable {
    /// RDMA multicast/unicast endpoint: port GID, queue pair number and Q_Key.
    case rdma(gidHi: UInt64, gidLo: UInt64, qpn: UInt32, qkey: UInt32)
    /// A capability this build does not know: kept verbatim so that it survives a map rewrite.
    case unknown(type: UInt8, value: [UInt8])
}

/// A node's scalar fields (`NodeMap.brief`): no arrays, so reading one costs no reference counting.
public struct NodeBrief: Sendable, Equatable {
    public var address: IPAddress
    public var id: NodeID
    public var state: NodeState
    public var incarnation: UInt64
    public var lastHeard: Instant
    public var hops: UInt8
    public var heartbeatPort: UInt16

    init(
        address: IPAddress, id: NodeID, state: NodeState, incarnation: UInt64, lastHeard: Instant, hops: UInt8,
        heartbeatPort: UInt16
    ) {
        self.address = address
        self.id = id
        self.state = state
        self.incarnation = incarnation
        self.lastHeard = lastHeard
        self.hops = hops
        self.heartbeatPort = heartbeatPort
    }

    @inlinable init(_ n: borrowing Node) {
        address = n.address
        id = n.id
        state = n.state
        incarnation = n.incarnation
        lastHeard = n.lastHeard
        hops = n.hops
        heartbeatPort = n.heartbeatPort
    }
}

/// One node of the cluster as this node knows it.
public struct Node: Hashable, Sendable {
    /// Primary address: the node's key; unique in a map.
    public var address: IPAddress
    /// Assigned ID (after collision resolution); equal to `preferredID` unless the node lost a collision.
    public var id: NodeID
    /// The ID the node claims: configured explicitly, or derived from its address; nil when underivable.
    public var preferredID: NodeID?
    /// Whether `preferredID` was configured explicitly (explicit claims beat derived ones).
    public var explicitID: Bool
    public var aliases: [Alias]
    public var state: NodeState
    /// Incremented by the node on each restart and on each refutation of a suspicion.
    public var incarnation: UInt64
    /// When the node was last heard from, in map time (nanoseconds; see `NodeMap.timeBaseUnixNanos`).
    public var lastHeard: Instant
    /// Gateway hops between us and the node when last heard (0 = same network).
    public var hops: UInt8
    /// UDP port of the node's heartbeat endpoint (0 = none).
    public var heartbeatPort: UInt16
    public var capabilities: [Capability]

    public init(
        address: IPAddress, id: NodeID, preferredID: NodeID?, explicitID: Bool = false, aliases: [Alias] = [],
        state: NodeState = .alive, incarnation: UInt64 = 0, lastHeard: Instant = .zero, hops: UInt8 = 0,
        heartbeatPort: UInt16 = 0, capabilities: [Capability] = []
    ) {
        self.address = address
        self.id = id
        self.preferredID = preferredID
        self.explicitID = explicitID
        self.aliases = aliases
        self.state = state
        self.incarnation = incarnation
        self.lastHeard = lastHeard
        self.hops = hops
        self.heartbeatPort = heartbeatPort
        self.capabilities = capabilities
    }
}
