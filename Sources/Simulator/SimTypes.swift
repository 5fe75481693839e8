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
    public internal(set) var knownAt: [UInt64]
    public internal(set) var survivors = 0
    public internal(set) var pending = 0
    /// Survivors that never had it in their map as a member (nothing to learn).
    public internal(set) var neverKnew = 0
    public internal(set) var completedAt: UInt64?

    static let pendingMark = UInt64.max
    static let notSurvivor = UInt64.max - 1
    static let neverKnewMark = UInt64.max - 2

    /// Latency of each survivor that learned of it (not those that never knew the node), from the departure.
    public var latencies: [UInt64] {
        knownAt.compactMap { $0 >= Self.neverKnewMark ? nil : $0 - time }
    }
}

/// A node that (re)started after the first start storm, and which running maps hold it: every node
/// running when it started must come to hold it as a member at its new incarnation or above.
public struct Arrival: Sendable {
    public let node: Int
    public let address: IPAddress
    public let incarnation: UInt64
    public let time: UInt64
    /// When each observer's map first held it (`Departure`'s marks for the others).
    public internal(set) var knownAt: [UInt64]
    public internal(set) var observers = 0
    public internal(set) var pending = 0
    public internal(set) var completedAt: UInt64?

    /// Latency of each observer that learned of it, from the start.
    public var latencies: [UInt64] {
        knownAt.compactMap { $0 >= Departure.neverKnewMark ? nil : $0 - time }
    }
}

/// A live node marked dead by another node's map, at or above the incarnation of its running process.
public struct FalseDeath: Sendable, Equatable {
    public let time: UInt64
    public let target: Int
    public let incarnation: UInt64
    public let firstMarkedBy: Int
    /// The two were on different sides of a partition (the death is expected there), or were until
    /// a heal less than δ + confirm window + loss grace before the mark.
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
    public var sentByType = [Int](repeating: 0, count: TrafficCounters.typeSlots)
    public var sentBytesByType = [Int](repeating: 0, count: TrafficCounters.typeSlots)
    /// One slot per wire type byte up to the highest type; an unknown byte counts in slot 0.
    public static let typeSlots = Int(MessageType.allCases.map(\.rawValue).max()!) + 1

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
