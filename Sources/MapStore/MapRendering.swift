import Events
import NodeMap

/// The three views `showmap` prints of a map file: a table for people, mosix.map lines for
/// `setpe`, and one JSON object for scripts.
///
/// Pure: the current time is passed in, so the output is a function of the snapshot and `now`.
public enum MapRendering {
    /// The nodes a view shows, ordered by ID: all of them, or only members (alive and suspect).
    public static func nodes(_ s: MapSnapshot, membersOnly: Bool = false) -> [Node] {
        s.nodes.filter { !membersOnly || $0.state.isMember }.sorted { $0.id < $1.id }
    }

    // MARK: Table

    /// A header line, a column header and one row per node:
    ///
    /// ```
    /// map generation 42: 3 nodes, 2 members; written by 10.0.0.1 (id 1) 0.2s ago
    /// ID    ADDRESS    STATE  INC  AGE   HOPS  ALIASES
    /// 1     10.0.0.1   alive  3    0.4s  0     10.1.0.1(interface)
    /// ```
    public static func table(_ s: MapSnapshot, nowUnixNanos: Int64, membersOnly: Bool = false) -> String {
        let members = s.nodes.lazy.filter { $0.state.isMember }.count
        var head = "map generation \(s.generation): \(s.nodes.count) node\(s.nodes.count == 1 ? "" : "s"), "
        head += "\(members) member\(members == 1 ? "" : "s"); written by "
        if s.selfAddress == .zero {
            head += "an unknown node"
        } else {
            head += "\(s.selfAddress)"
            if let me = s.nodes.first(where: { $0.address == s.selfAddress }) { head += " (id \(me.id))" }
        }
        head += " \(age(nanos: nowUnixNanos &- writtenAtUnixNanos(s))) ago"

        let shown = nodes(s, membersOnly: membersOnly)
        // The RDMA column appears when some node has an RDMA endpoint (GID and queue pair number).
        let rdma = shown.contains { $0.capabilities.contains { if case .rdma = $0 { true } else { false } } }
        var rows: [[String]] = [["ID", "ADDRESS", "STATE", "INC", "AGE", "HOPS", "ALIASES"] + (rdma ? ["RDMA"] : [])]
        for n in shown {
            let aliases = n.aliases.map { "\($0.address)(\($0.source))" }.joined(separator: ",")
            var row = [
                "\(n.id)", "\(n.address)", "\(n.state)", "\(n.incarnation)",
                age(nanos: nowUnixNanos &- s.lastHeardUnixNanos(n)), "\(n.hops)", aliases.isEmpty ? "-" : aliases,
            ]
            if rdma { row.append(rdmaText(n.capabilities) ?? "-") }
            rows.append(row)
        }
        var widths = [Int](repeating: 0, count: rows[0].count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        var out = head + "\n"
        for r in rows {
            var line = ""
            for (i, c) in r.enumerated() {
                line += c
                if i < r.count - 1 { line += String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            out += line + "\n"
        }
        return out
    }

    /// `gid <GID as IPv6 text> qpn <N>` for a node's RDMA endpoint (a RoCE v2 IPv4 GID reads
    /// `::ffff:a.b.c.d`), nil without one.
    public static func rdmaText(_ caps: [Capability]) -> String? {
        for c in caps {
            guard case .rdma(let hi, let lo, let qpn, _) = c else { continue }
            let mapped = hi == 0 && lo >> 32 == 0xFFFF
            let gid = mapped ? "::ffff:\(IPAddress(hi: hi, lo: lo))" : "\(IPAddress(hi: hi, lo: lo))"
            return "gid \(gid) qpn \(qpn)"
        }
        return nil
    }

    /// A short duration for people: `0.4s` below 10 s, then `42s`, `12m3s`, `3h12m`, `2d3h`.
    /// A negative duration (a clock that went backwards) shows as `0.0s`.
    public static func age(nanos: Int64) -> String { DurationText.age(nanos: nanos) }

    // MARK: mosix.map

    /// Exactly `MosixMap.render` of the nodes (which itself leaves out dead and left nodes).
    public static func mosix(_ s: MapSnapshot, membersOnly: Bool = false) -> String {
        MosixMap.render(nodes(s, membersOnly: membersOnly))
    }

    // MARK: JSON

    /// One JSON object on one line (keys sorted, no insignificant whitespace), the contract scripts use:
    ///
    /// `{"generation":N,"nodes":[…],"self":"addr"|null,"written_at_unix_ms":N}` with each node
    /// `{"address","age_ms","aliases":[{"address","source"}],"capabilities":[…],"explicit_id",
    /// "heartbeat_port","hops","id","incarnation","last_heard_unix_ms","preferred_id"(N|null),"state"}`;
    /// a capability is `{"gid","qkey","qpn","type":"rdma"}` or `{"type":N,"value":"hex"}`.
    public static func json(_ s: MapSnapshot, nowUnixNanos: Int64, membersOnly: Bool = false) -> String {
        let nodeValues: [JSON.Value] = nodes(s, membersOnly: membersOnly).map { n in
            let heard = s.lastHeardUnixNanos(n)
            return obj([
                "id": .uint(UInt64(n.id.rawValue)),
                "address": .string("\(n.address)"),
                "preferred_id": n.preferredID.map { .uint(UInt64($0.rawValue)) } ?? .null,
                "explicit_id": .bool(n.explicitID),
                "state": .string("\(n.state)"),
                "incarnation": .uint(n.incarnation),
                "last_heard_unix_ms": .int(heard / 1_000_000),
                "age_ms": .int(max(0, nowUnixNanos &- heard) / 1_000_000),
                "hops": .uint(UInt64(n.hops)),
                "heartbeat_port": .uint(UInt64(n.heartbeatPort)),
                "aliases": .array(
                    n.aliases.map {
                        obj(["address": .string("\($0.address)"), "source": .string("\($0.source)")])
                    }),
                "capabilities": .array(n.capabilities.map(capabilityJSON)),
            ])
        }
        let root: JSON.Value = obj([
            "generation": .uint(s.generation),
            "self": s.selfAddress == .zero ? .null : .string("\(s.selfAddress)"),
            "written_at_unix_ms": .int(writtenAtUnixNanos(s) / 1_000_000),
            "nodes": .array(nodeValues),
        ])
        return JSON.render(root) + "\n"
    }

    private static func capabilityJSON(_ c: Capability) -> JSON.Value {
        switch c {
        case .rdma(let gh, let gl, let qpn, let qkey):
            return obj([
                "type": .string("rdma"), "gid": .string(gidHex(hi: gh, lo: gl)), "qpn": .uint(UInt64(qpn)),
                "qkey": .uint(UInt64(qkey)),
            ])
        case .unknown(let t, let v):
            return obj(["type": .uint(UInt64(t)), "value": .string(hexBytes(v))])
        }
    }

    /// An object with its keys in byte order (the contract's sorted keys).
    private static func obj(_ d: [String: JSON.Value]) -> JSON.Value {
        .object(d.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }.map { ($0.key, $0.value) })
    }

    /// Wall-clock time (Unix ns) the file was written.
    public static func writtenAtUnixNanos(_ s: MapSnapshot) -> Int64 {
        s.timeBaseUnixNanos &+ Int64(truncatingIfNeeded: s.writtenAt.nanos)
    }

    /// An RDMA GID as 32 hex digits, as the JSON view and the daemon's status show it.
    public static func gidHex(hi: UInt64, lo: UInt64) -> String { hex(hi) + hex(lo) }

    private static func hex(_ v: UInt64) -> String {
        let d = String(v, radix: 16)
        return String(repeating: "0", count: 16 - d.count) + d
    }

    private static func hexBytes(_ b: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(b.count * 2)
        for x in b {
            out.append(digits[Int(x >> 4)])
            out.append(digits[Int(x & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
