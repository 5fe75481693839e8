/// The published event stream (docs/EVENTS.md, "The event stream"), after BLCR's Fault Tolerance
/// Backplane: every membership, process and configuration change as an event with a space, a name,
/// a severity, the node it is about, a time and a payload, numbered by a per-daemon sequence, kept
/// in a bounded history so that a subscriber who reconnects gets what it missed or is told, by an
/// explicit marker, that it cannot. Pure: the daemon feeds it and serves it.

/// FTB's severities.
public enum Severity: Int, Comparable, Sendable, CaseIterable, CustomStringConvertible {
    case info = 0, warning, error, fatal
    public static func < (a: Severity, b: Severity) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .info: "INFO"
        case .warning: "WARNING"
        case .error: "ERROR"
        case .fatal: "FATAL"
        }
    }
    public init?(text: String) {
        guard let s = Severity.allCases.first(where: { $0.description == text.uppercased() }) else { return nil }
        self = s
    }
}

/// The event spaces.
public enum EventSpace: String, Sendable, CaseIterable {
    case membership = "discd.membership"
    case process = "discd.process"
    case config = "discd.config"
}

/// What a stream event says, before it is numbered.
public struct StreamItem: Sendable, Equatable {
    public var space: EventSpace
    public var name: String
    public var severity: Severity
    /// The node the event is about (its primary address), if any.
    public var node: String?
    public var nodeID: Int?
    public var payload: [(String, FieldValue)]

    public init(space: EventSpace, name: String, severity: Severity, node: String?, nodeID: Int?, payload: [(String, FieldValue)] = []) {
        self.space = space
        self.name = name
        self.severity = severity
        self.node = node
        self.nodeID = nodeID
        self.payload = payload
    }

    public static func == (a: StreamItem, b: StreamItem) -> Bool {
        a.space == b.space && a.name == b.name && a.severity == b.severity && a.node == b.node && a.nodeID == b.nodeID
            && a.payload.map(\.0) == b.payload.map(\.0) && a.payload.map(\.1) == b.payload.map(\.1)
    }
}

/// A numbered event of the stream.
public struct StreamEvent: Sendable, Equatable {
    /// 1, 2, 3, ... for the life of one daemon (its `epoch`).
    public var seq: UInt64
    /// The publishing daemon's incarnation: a subscriber that sees it change knows the numbering
    /// restarted.
    public var epoch: UInt64
    public var timeUnixMillis: Int64
    public var item: StreamItem

    /// One JSON object on one line: seq, epoch, time_unix_ms, space, name, severity, node, node_id,
    /// payload (an object).
    public var jsonLine: String {
        JSON.render(
            .object([
                ("seq", .uint(seq)), ("epoch", .uint(epoch)), ("time_unix_ms", .int(timeUnixMillis)),
                ("space", .string(item.space.rawValue)), ("name", .string(item.name)),
                ("severity", .string(item.severity.description)),
                ("node", item.node.map { .string($0) } ?? .null), ("node_id", item.nodeID.map { .int(Int64($0)) } ?? .null),
                ("payload", .object(item.payload.map { ($0.0, .scalar($0.1)) })),
            ]))
    }

    /// `SEQ SEVERITY space NAME node key=value ...` for people.
    public var text: String {
        var s = "\(seq) \(item.severity) \(item.space.rawValue) \(item.name)"
        if let n = item.node { s += " \(n)" }
        if let id = item.nodeID { s += " id=\(id)" }
        for (k, v) in item.payload { s += " \(k)=\(JSON.render(.scalar(v)))" }
        return s
    }
}

/// Which events a subscriber wants (FTB_Subscribe's filters): spaces, names, a least severity.
public struct EventFilter: Sendable, Equatable {
    public var spaces: Set<String>
    public var names: Set<String>
    public var minSeverity: Severity
    public init(spaces: Set<String> = [], names: Set<String> = [], minSeverity: Severity = .info) {
        self.spaces = spaces
        self.names = names
        self.minSeverity = minSeverity
    }
    public func matches(_ e: StreamEvent) -> Bool {
        (spaces.isEmpty || spaces.contains(e.item.space.rawValue)) && (names.isEmpty || names.contains(e.item.name))
            && e.item.severity >= minSeverity
    }
}

/// The numbered, bounded history.
public struct EventHistory: Sendable {
    public let capacity: Int
    public let epoch: UInt64
    private var ring: [StreamEvent] = []
    private var head = 0
    public private(set) var lastSeq: UInt64 = 0

    public init(capacity: Int, epoch: UInt64) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.epoch = epoch
    }

    /// The oldest sequence number still held (lastSeq + 1 when empty).
    public var oldestSeq: UInt64 { ring.isEmpty ? lastSeq + 1 : lastSeq + 1 - UInt64(ring.count) }

    public mutating func append(_ item: StreamItem, timeUnixMillis: Int64) -> StreamEvent {
        lastSeq += 1
        let e = StreamEvent(seq: lastSeq, epoch: epoch, timeUnixMillis: timeUnixMillis, item: item)
        if ring.count < capacity {
            ring.append(e)
        } else {
            ring[head] = e
            head = (head + 1) % capacity
        }
        return e
    }

    /// Why a subscriber resuming after `since` cannot have everything it missed.
    public enum Gap: Sendable, Equatable {
        /// Events `from...to` fell out of the history.
        case evicted(from: UInt64, to: UInt64)
        /// `since` is beyond anything this daemon numbered: it restarted (another epoch).
        case restarted(lastSeq: UInt64)
    }

    /// Everything after `since`, oldest first, and the gap if some of it is gone.
    public func since(_ since: UInt64) -> (gap: Gap?, events: [StreamEvent]) {
        if since > lastSeq { return (.restarted(lastSeq: lastSeq), all) }
        let from = since + 1
        if from >= oldestSeq {
            return (nil, all.filter { $0.seq >= from })
        }
        return (.evicted(from: from, to: oldestSeq - 1), all)
    }

    public var all: [StreamEvent] {
        ring.count < capacity ? ring : Array(ring[head...] + ring[..<head])
    }
}
