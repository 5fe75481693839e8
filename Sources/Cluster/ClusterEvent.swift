@_exported import Events
import Detector
import Discovery
import NodeMap
import Wire

/// Why a datagram was dropped: one counter each (the status file's `drops`), never a crash.
public enum DropReason: String, CaseIterable, Sendable, Hashable {
    case tooShort = "too_short", tooLong = "too_long", badMagic = "bad_magic", badVersion = "bad_version"
    case unknownType = "unknown_type", unknownFlags = "unknown_flags", badCluster = "bad_cluster"
    case badLength = "bad_length", malformed, missingTag = "missing_tag"
    /// A well-formed datagram of another cluster (its name differs).
    case otherCluster = "other_cluster"
    /// Tagged (authenticated) while this node has no key to check it.
    case unverifiableTag = "unverifiable_tag"
    /// Our own datagram come back (through a gateway).
    case own
    /// From an incarnation of its sender older than the map knows.
    case staleIncarnation = "stale_incarnation"
    /// An RDMA immediate-only notice naming a node ID the map does not hold.
    case unknownNotice = "unknown_notice"
    /// Cluster keys are configured and the datagram has no tag (or is an RDMA immediate, which
    /// cannot have one and is not trusted).
    case unauthenticated
    /// Tagged with a key ID not in this node's keyring.
    case unknownKey = "unknown_key"
    /// The tag is wrong: forged, corrupted, or signed with another key of the same ID.
    case badTag = "bad_tag"
    /// Its replay counter was accepted before, or is older than the replay window.
    case replayed
    /// From a source outside the daemon's --allow-from list.
    case notAllowed = "not_allowed"

    public init(_ e: DecodeError) {
        self = DropReason(rawValue: e.counterName) ?? .malformed
    }
}

/// Every event one node emits: map changes, the detector's and discovery's decisions, drops,
/// refutations. `name`s are stable (the JSON log and the event stream key on them).
public enum ClusterEvent: Event, Hashable {
    case member(NodeMapChange)
    case detector(DetectorEvent)
    case discovery(DiscoveryEvent)
    case dropped(DropReason, from: IPAddress?)
    case received(type: MessageType, origin: IPAddress, hops: UInt8, incarnation: UInt64, interface: Int)
    /// This node contradicted an accusation (`by` nil: a datagram in our name) by going from incarnation
    /// `from` to `to`, above the accusation's `past`.
    case refuted(accusation: DetectorEvent.Accusation, by: IPAddress?, past: UInt64, from: UInt64, to: UInt64)
    case processExited(ProcessExit)
    /// An immediate-only process-exit notice (kernel module fdmod over RDMA): node and watch tag.
    case processNotice(node: IPAddress, id: NodeID, tag: UInt16)
    case encodeFailed(type: MessageType, reason: String)

    public var name: String {
        switch self {
        case .member(let c):
            switch c {
            case .added: "member.joined"
            case .removed: "member.removed"
            case .stateChanged: "member.state"
            case .updated: "member.updated"
            case .idChanged: "member.id_changed"
            case .collision: "member.id_collision"
            }
        case .detector(let e): e.name
        case .discovery(let e): e.name
        case .dropped: "datagram.dropped"
        case .received: "datagram.received"
        case .refuted: "node.refuted"
        case .processExited: "process.exited"
        case .processNotice: "process.notice"
        case .encodeFailed: "datagram.encode_failed"
        }
    }

    public var level: LogLevel {
        switch self {
        case .member(let c):
            switch c {
            case .stateChanged(_, _, _, let to, _): to == .dead || to == .suspect ? .notice : .info
            case .collision: .warning
            case .updated: .debug
            default: .info
            }
        case .detector(let e): e.level
        case .discovery(let e): e.level
        case .dropped, .received: .debug
        case .refuted: .warning
        case .processExited, .processNotice: .notice
        case .encodeFailed: .error
        }
    }

    public func fields(into f: inout EventFields) {
        switch self {
        case .member(let c):
            switch c {
            case .added(let n):
                f.add("address", n.address)
                f.add("id", n.id.rawValue)
                f.add("incarnation", n.incarnation)
                f.add("hops", Int(n.hops))
            case .removed(let n):
                f.add("address", n.address)
                f.add("id", n.id.rawValue)
            case .stateChanged(let a, let id, let from, let to, let inc):
                f.add("address", a)
                f.add("id", id.rawValue)
                f.add("from", "\(from)")
                f.add("to", "\(to)")
                f.add("incarnation", inc)
            case .updated(let n):
                f.add("address", n.address)
                f.add("id", n.id.rawValue)
                f.add("incarnation", n.incarnation)
                f.add("hops", Int(n.hops))
                f.add("aliases", .strings(n.aliases.map { $0.address.description }))
            case .idChanged(let a, let from, let to):
                f.add("address", a)
                f.add("from", from.rawValue)
                f.add("to", to.rawValue)
            case .collision(let id, let w, let l):
                f.add("id", id.rawValue)
                f.add("winner", w)
                f.add("loser", l)
            }
        case .detector(let e): e.fields(into: &f)
        case .discovery(let e): e.fields(into: &f)
        case .dropped(let r, let from):
            f.add("reason", r.rawValue)
            f.add("from", from)
        case .received(let t, let o, let hops, let inc, let i):
            f.add("type", "\(t)")
            f.add("origin", o)
            f.add("hops", Int(hops))
            f.add("incarnation", inc)
            f.add("interface", i)
        case .refuted(let acc, let by, let past, let from, let to):
            f.add("accusation", acc.rawValue)
            f.add("by", by)
            f.add("past", past)
            f.add("from", from)
            f.add("to", to)
        case .processExited(let p):
            f.add("node", p.node)
            f.add("pid", UInt64(p.pid))
            f.add("tag", Int(p.tag))
            f.add("name", p.name)
            f.add("status", Int(p.status))
            f.add("exit_code", p.exitCode.map { FieldValue.int(Int64($0)) } ?? .null)
            f.add("signal", p.signal.map { FieldValue.int(Int64($0)) } ?? .null)
            f.add("source", p.source == .kernel ? "kernel" : "daemon")
        case .processNotice(let node, let id, let tag):
            f.add("node", node)
            f.add("id", id.rawValue)
            f.add("tag", Int(tag))
        case .encodeFailed(let t, let r):
            f.add("type", "\(t)")
            f.add("reason", r)
        }
    }

    public var text: String {
        switch self {
        case .member(let c):
            switch c {
            case .added(let n): "member \(n.address) id=\(n.id) joined incarnation=\(n.incarnation) hops=\(n.hops)"
            case .removed(let n): "member \(n.address) id=\(n.id) removed"
            case .stateChanged(let a, let id, let from, let to, let inc):
                "member \(a) id=\(id) \(from) -> \(to) incarnation=\(inc)"
            case .updated(let n):
                "member \(n.address) id=\(n.id) updated incarnation=\(n.incarnation) aliases=\(n.aliases.map { "\($0.address)" })"
            case .idChanged(let a, let from, let to): "member \(a) id changed \(from) -> \(to)"
            case .collision(let id, let w, let l): "id collision on \(id): \(w) keeps it, \(l) gets a substitute"
            }
        case .detector(let e): e.text
        case .discovery(let e): e.text
        case .dropped(let r, let from): "dropped datagram\(from.map { " from \($0)" } ?? ""): \(r.rawValue)"
        case .received(let t, let o, let hops, let inc, let i):
            "rx \(t) from \(o) hops=\(hops) incarnation=\(inc) on interface \(i)"
        case .refuted(let acc, let by, let past, let from, let to):
            "refuted \(acc.rawValue)\(by.map { " by \($0)" } ?? " in this node's name") at incarnation \(past): "
                + "incarnation \(from) -> \(to)"
        case .processExited(let p): "process \(p.pid) (\(p.name)) on \(p.node) exited with status \(p.status)"
        case .processNotice(let node, let id, let tag): "process with watch tag \(tag) on node \(id) (\(node)) exited"
        case .encodeFailed(let t, let r): "cannot encode \(t): \(r)"
        }
    }
}
