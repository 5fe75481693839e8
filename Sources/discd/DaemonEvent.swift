import Cluster
import NodeMap

/// What the daemon shell itself reports (stable names, like the cores' events).
enum DaemonEvent: Event {
    case started(
        node: IPAddress, interfaces: [String], group: String, port: Int, heartbeatPort: Int, cluster: String,
        ttl: Int?, relay: Bool, detector: String, incarnation: UInt64, pid: Int32, daemon: Bool)
    case stopping(signal: String)
    case stopped(incarnation: UInt64)
    case debugToggled(on: Bool)
    case aliasesChanged(aliases: [IPAddress])
    case primaryAddressGone(address: IPAddress, interfaces: [String])
    case sendFailed(to: String, error: String, total: Int)
    case socketError(error: String)
    case mapWriteFailed(path: String, error: String)
    /// The map file left by the last run is corrupt: not trusted, moved to `movedTo` (nil: could not be moved).
    case mapFileCorrupt(path: String, error: String, movedTo: String?)
    case library(level: LogLevel, source: String, message: String)
    /// The RDMA transport opened its endpoint (at start, or back after a loss).
    case rdmaUp(device: String, port: Int, gid: String, qpn: UInt32, qkey: UInt32, mtu: Int)
    /// The RDMA transport is down (`wasUp`: it was running; else it could not open): IP carries on.
    case rdmaDown(reason: String, wasUp: Bool)
    /// A control-socket request was malformed, oversized or unknown: refused, connection closed.
    case controlRequestRefused(reason: String, total: Int)
    /// A watch request was refused (no such process, another user's process, ...).
    case watchRefused(pid: Int32, uid: UInt32, reason: String)
    /// A process is watched.
    case watching(pid: Int32, tag: UInt16, name: String)
    /// An event hook ran and exited 0.
    case hookRan(program: String, event: String, seq: UInt64)
    /// An event hook failed: could not start, exited non-zero, was killed, hit its time limit, or
    /// was dropped (queue full).
    case hookFailed(program: String, event: String, seq: UInt64, reason: String)
    /// The kernel module link opened `/dev/heartbeat` (kernel/README.md).
    case kernelAttached(device: String)
    /// The kernel module link let go of `/dev/heartbeat` (on request, or the module went away).
    case kernelDetached(reason: String)
    /// The key file was read again (SIGHUP): the IDs of its keys, the primary first.
    case keysReloaded(path: String, ids: [UInt32])
    /// The key file could not be read again: the keys in use are kept.
    case keysReloadFailed(path: String, error: String)

    var name: String {
        switch self {
        case .started: "daemon.started"
        case .stopping: "daemon.stopping"
        case .stopped: "daemon.stopped"
        case .debugToggled: "daemon.debug_toggled"
        case .aliasesChanged: "daemon.aliases_changed"
        case .primaryAddressGone: "daemon.primary_address_gone"
        case .sendFailed: "transport.send_failed"
        case .socketError: "transport.socket_error"
        case .mapWriteFailed: "map.write_failed"
        case .mapFileCorrupt: "map.corrupt"
        case .library: "library.log"
        case .rdmaUp: "rdma.up"
        case .rdmaDown: "rdma.down"
        case .controlRequestRefused: "control.refused"
        case .watchRefused: "process.watch_refused"
        case .watching: "process.watching"
        case .hookRan: "hook.ran"
        case .hookFailed: "hook.failed"
        case .kernelAttached: "kernel.attached"
        case .kernelDetached: "kernel.detached"
        case .keysReloaded: "keys.reloaded"
        case .keysReloadFailed: "keys.reload_failed"
        }
    }

    var level: LogLevel {
        switch self {
        case .started, .stopping, .stopped, .debugToggled, .aliasesChanged: .notice
        case .primaryAddressGone, .sendFailed: .warning
        case .socketError: .debug
        case .mapWriteFailed: .error
        case .mapFileCorrupt: .warning
        case .library(let l, _, _): l
        case .rdmaUp: .notice
        case .rdmaDown(_, let wasUp): wasUp ? .warning : .info
        case .controlRequestRefused, .watchRefused: .warning
        case .watching: .info
        case .hookRan: .debug
        case .hookFailed: .warning
        case .kernelAttached, .kernelDetached, .keysReloaded: .notice
        case .keysReloadFailed: .error
        }
    }

    func fields(into f: inout EventFields) {
        switch self {
        case .started(let node, let ifs, let group, let port, let hb, let cluster, let ttl, let relay, let det, let inc, let pid, let daemon):
            f.add("node", node)
            f.add("interfaces", .strings(ifs))
            f.add("group", group)
            f.add("port", port)
            f.add("heartbeat_port", hb)
            f.add("cluster", cluster)
            f.add("ttl", ttl.map { .int(Int64($0)) } ?? .null)
            f.add("relay", relay)
            f.add("detector", det)
            f.add("incarnation", inc)
            f.add("pid", Int(pid))
            f.add("daemon", daemon)
        case .stopping(let s): f.add("signal", s)
        case .stopped(let inc): f.add("incarnation", inc)
        case .debugToggled(let on): f.add("debug", on)
        case .aliasesChanged(let a): f.add("aliases", .strings(a.map(\.description)))
        case .primaryAddressGone(let a, let ifs):
            f.add("address", a)
            f.add("interfaces", .strings(ifs))
        case .sendFailed(let to, let e, let total):
            f.add("to", to)
            f.add("error", e)
            f.add("total", total)
        case .socketError(let e): f.add("error", e)
        case .mapWriteFailed(let p, let e):
            f.add("path", p)
            f.add("error", e)
        case .mapFileCorrupt(let p, let e, let to):
            f.add("path", p)
            f.add("error", e)
            if let to { f.add("moved_to", to) }
        case .library(_, let source, let m):
            f.add("source", source)
            f.add("message", m)
        case .rdmaUp(let d, let p, let g, let qpn, let qkey, let mtu):
            f.add("device", d)
            f.add("port", p)
            f.add("gid", g)
            f.add("qpn", UInt64(qpn))
            f.add("qkey", UInt64(qkey))
            f.add("mtu", mtu)
        case .rdmaDown(let r, let wasUp):
            f.add("reason", r)
            f.add("was_up", wasUp)
        case .controlRequestRefused(let r, let total):
            f.add("reason", r)
            f.add("total", total)
        case .watchRefused(let pid, let uid, let r):
            f.add("pid", Int(pid))
            f.add("uid", Int(uid))
            f.add("reason", r)
        case .watching(let pid, let tag, let name):
            f.add("pid", Int(pid))
            f.add("tag", Int(tag))
            f.add("name", name)
        case .hookRan(let p, let e, let seq):
            f.add("program", p)
            f.add("event", e)
            f.add("seq", seq)
        case .hookFailed(let p, let e, let seq, let r):
            f.add("program", p)
            f.add("event", e)
            f.add("seq", seq)
            f.add("reason", r)
        case .kernelAttached(let d): f.add("device", d)
        case .kernelDetached(let r): f.add("reason", r)
        case .keysReloaded(let p, let ids):
            f.add("path", p)
            f.add("key_ids", .strings(ids.map { String($0, radix: 16) }))
        case .keysReloadFailed(let p, let e):
            f.add("path", p)
            f.add("error", e)
        }
    }

    var text: String {
        switch self {
        case .started(let node, let ifs, let group, let port, let hb, let cluster, let ttl, let relay, let det, let inc, _, let daemon):
            "discd started\(daemon ? " (daemon)" : ""): node \(node) on \(ifs.joined(separator: ",")) group \(group):\(port) "
                + "heartbeat port \(hb) cluster \(cluster) incarnation \(inc)" + (ttl.map { " ttl \($0)" } ?? "")
                + (relay ? " relaying" : "") + " detector \(det)"
        case .stopping(let s): "stopping on \(s): sending leave"
        case .stopped: "discd stopped"
        case .debugToggled(let on): "debug logging \(on ? "on" : "off") (SIGUSR1)"
        case .aliasesChanged(let a): "interface addresses changed: aliases now \(a.map(\.description))"
        case .primaryAddressGone(let a, let ifs):
            "primary address \(a) is gone from \(ifs.joined(separator: ",")); peers will declare this node dead"
        case .sendFailed(let to, let e, let total): "send to \(to) failed: \(e) (\(total) send errors so far)"
        case .socketError(let e): "socket error: \(e)"
        case .mapWriteFailed(let p, let e): "cannot write map file \(p): \(e)"
        case .mapFileCorrupt(let p, let e, let to):
            "the map file left by the last run is not trusted (\(e)); "
                + (to.map { "moved to \($0), " } ?? "could not be moved aside, ") + "\(p) will be rewritten"
        case .library(_, let source, let m): "\(source): \(m)"
        case .rdmaUp(let d, let p, let g, let qpn, _, let mtu):
            "RDMA transport up on \(d) port \(p): GID \(g) QPN \(qpn) MTU \(mtu)"
        case .rdmaDown(let r, let wasUp):
            wasUp ? "RDMA transport down (\(r)): falling back to IP" : "RDMA transport not available (\(r)): IP only"
        case .controlRequestRefused(let r, let total): "control request refused: \(r) (\(total) so far)"
        case .watchRefused(let pid, let uid, let r): "watch of process \(pid) for uid \(uid) refused: \(r)"
        case .watching(let pid, let tag, let name): "watching process \(pid) (\(name)) tag \(tag)"
        case .hookRan(let p, let e, let seq): "hook \(p) ran for \(e) #\(seq)"
        case .hookFailed(let p, let e, let seq, let r): "hook \(p) for \(e) #\(seq) failed: \(r)"
        case .kernelAttached(let d): "kernel modules: reading process exits from \(d)"
        case .kernelDetached(let r): "kernel modules: \(r)"
        case .keysReloaded(let p, let ids):
            "cluster keys reloaded from \(p): \(ids.map { String($0, radix: 16) }.joined(separator: ", ")) (primary first)"
        case .keysReloadFailed(let p, let e): "cluster keys not reloaded from \(p): \(e); the keys in use are kept"
        }
    }

    /// The `discd.config` stream event for a change of this node's configuration (docs/EVENTS.md), or nil.
    var streamItem: StreamItem? {
        func item(_ name: String, _ sev: Severity, _ payload: [(String, FieldValue)]) -> StreamItem {
            StreamItem(space: .config, name: name, severity: sev, node: nil, nodeID: nil, payload: payload)
        }
        switch self {
        case .rdmaUp(let d, let p, let g, let qpn, _, let mtu):
            return item("RDMA_UP", .info, [("device", .string(d)), ("port", .int(Int64(p))), ("gid", .string(g)),
                                            ("qpn", .uint(UInt64(qpn))), ("mtu", .int(Int64(mtu)))])
        case .rdmaDown(let r, true):
            // A transition only: "still down" (a retry that found no device) is no change.
            return item("RDMA_DOWN", .warning, [("reason", .string(r))])
        case .aliasesChanged(let a):
            return item("ADDRESSES_CHANGED", .info, [("aliases", .strings(a.map(\.description)))])
        case .primaryAddressGone(let a, let ifs):
            return item("PRIMARY_ADDRESS_GONE", .error, [("address", .string(a.description)), ("interfaces", .strings(ifs))])
        case .debugToggled(let on):
            return item("DEBUG_TOGGLED", .info, [("debug", .bool(on))])
        case .mapWriteFailed(let p, let e):
            return item("MAP_WRITE_FAILED", .error, [("path", .string(p)), ("error", .string(e))])
        case .kernelAttached(let d):
            return item("KERNEL_ATTACHED", .info, [("device", .string(d))])
        case .kernelDetached(let r):
            return item("KERNEL_DETACHED", .warning, [("reason", .string(r))])
        case .keysReloaded(_, let ids):
            return item("KEYS_RELOADED", .info, [("key_ids", .strings(ids.map { String($0, radix: 16) }))])
        case .keysReloadFailed(let p, let e):
            return item("KEYS_RELOAD_FAILED", .error, [("path", .string(p)), ("error", .string(e))])
        default:
            return nil
        }
    }
}
