import Detector
import Discovery
import NodeMap
import Wire

/// Which cluster events are published on the event stream, and as what (docs/EVENTS.md, "The event
/// stream"). A node's membership events follow its state machine (Kerrighed's hotplug layer):
///
/// ```
///            NODE_JOIN            NODE_SUSPECT
///   (none) ────────────▶ alive ───────────────▶ suspect
///                        ▲  │ ▲                 │   │
///              NODE_JOIN │  │ └── NODE_REFUTE ──┘   │ NODE_DEAD
///   (higher incarnation) │  │ NODE_LEAVE            ▼
///                        └──┴───────▶ left      dead
/// ```
/// NODE_DEAD also follows alive directly (a death learned from another node); dead and left nodes
/// come back only with NODE_JOIN (a new incarnation). Every NODE_SUSPECT has at most one outcome,
/// NODE_REFUTE or NODE_DEAD (or NODE_LEAVE), because the map makes one transition out of suspect.
public enum StreamMapping {
    public static func item(for e: ClusterEvent) -> StreamItem? {
        switch e {
        case .member(let c):
            switch c {
            case .added(let n):
                guard n.state.isMember else { return nil }
                return StreamItem(
                    space: .membership, name: "NODE_JOIN", severity: .info, node: "\(n.address)", nodeID: Int(n.id.rawValue),
                    payload: [("incarnation", .uint(n.incarnation)), ("hops", .int(Int64(n.hops)))])
            case .stateChanged(let a, let id, let from, let to, let inc):
                let name: String
                let severity: Severity
                switch (from, to) {
                case (_, .suspect):
                    (name, severity) = ("NODE_SUSPECT", .warning)
                case (.suspect, .alive):
                    (name, severity) = ("NODE_REFUTE", .info)
                case (_, .dead):
                    (name, severity) = ("NODE_DEAD", .error)
                case (_, .left):
                    (name, severity) = ("NODE_LEAVE", .info)
                case (.dead, .alive), (.left, .alive):
                    (name, severity) = ("NODE_JOIN", .info)
                default:
                    return nil
                }
                return StreamItem(
                    space: .membership, name: name, severity: severity, node: "\(a)", nodeID: Int(id.rawValue),
                    payload: [("from", .string("\(from)")), ("to", .string("\(to)")), ("incarnation", .uint(inc))])
            case .removed(let n):
                return StreamItem(space: .membership, name: "NODE_REMOVED", severity: .info, node: "\(n.address)", nodeID: Int(n.id.rawValue))
            case .collision(let id, let winner, let loser):
                return StreamItem(
                    space: .membership, name: "ID_COLLISION", severity: .warning, node: "\(loser)", nodeID: Int(id.rawValue),
                    payload: [("winner", .string("\(winner)")), ("loser", .string("\(loser)"))])
            case .idChanged(let a, let from, let to):
                return StreamItem(
                    space: .membership, name: "ID_CHANGED", severity: .info, node: "\(a)", nodeID: Int(to.rawValue),
                    payload: [("from", .int(Int64(from.rawValue))), ("to", .int(Int64(to.rawValue)))])
            case .updated:
                return nil
            }
        case .processNotice(let node, let id, let tag):
            return StreamItem(
                space: .process, name: "PROC_EXIT", severity: .error, node: "\(node)", nodeID: Int(id.rawValue),
                payload: [("tag", .int(Int64(tag))), ("source", .string("rdma_immediate"))])
        case .processExited(let p):
            return StreamItem(
                space: .process, name: "PROC_EXIT", severity: p.exitCode == 0 ? .info : .error, node: "\(p.node)", nodeID: nil,
                payload: [
                    ("pid", .uint(UInt64(p.pid))), ("tag", .int(Int64(p.tag))), ("name", .string(p.name)),
                    ("status", .int(Int64(p.status))), ("exit_code", p.exitCode.map { .int(Int64($0)) } ?? .null),
                    ("signal", p.signal.map { .int(Int64($0)) } ?? .null),
                    ("source", .string(p.source == .kernel ? "kernel" : "daemon")),
                ])
        case .refuted(let acc, _, _, let from, let to):
            return StreamItem(
                space: .membership, name: "SELF_REFUTED", severity: .warning, node: nil, nodeID: nil,
                payload: [("accusation", .string(acc.rawValue)), ("from", .uint(from)), ("to", .uint(to))])
        case .detector, .discovery, .dropped, .received, .encodeFailed:
            return nil
        }
    }
}
