/// openMosix `mosix.map` text, the format of `setpe`:
///
/// ```
/// # first-ID  first-address  count      a run of consecutive IDs on consecutive addresses
/// 1           192.168.1.1    10
/// # gateway-ID  alternate-address  ALIAS  another address of an existing node
/// 5           10.0.0.5       ALIAS
/// ```
public enum MosixMap {
    public enum Line: Hashable, Sendable {
        case range(first: NodeID, address: IPAddress, count: Int)
        case alias(id: NodeID, address: IPAddress)
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let line: Int
        public let reason: String
        public var description: String { "line \(line): \(reason)" }
    }

    /// Renders the members of a map (alive and suspect nodes; dead and left ones are not handed to
    /// the kernel) as mosix.map lines: ranges first, then ALIAS lines.
    public static func render(_ nodes: [Node]) -> String {
        lines(for: nodes).map(format).joined(separator: "\n") + "\n"
    }

    public static func lines(for nodes: [Node]) -> [Line] {
        let members = nodes.filter { $0.state.isMember }.sorted { $0.id < $1.id }
        var out: [Line] = []
        var i = 0
        while i < members.count {
            var j = i + 1
            while j < members.count,
                members[j].id.rawValue == members[j - 1].id.rawValue &+ 1,
                members[j].address.family == members[i].address.family,
                members[j - 1].address.advanced(by: 1) == members[j].address
            {
                j += 1
            }
            out.append(.range(first: members[i].id, address: members[i].address, count: j - i))
            i = j
        }
        for n in members {
            for a in n.aliases { out.append(.alias(id: n.id, address: a.address)) }
        }
        return out
    }

    public static func format(_ l: Line) -> String {
        switch l {
        case .range(let f, let a, let c): return "\(f) \(a) \(c)"
        case .alias(let id, let a): return "\(id) \(a) ALIAS"
        }
    }

    /// Parses mosix.map text. Comments start with `#`; blank lines are ignored. Every error names its line.
    public static func parse(_ text: String) throws -> [Line] {
        var out: [Line] = []
        var taken: [ClosedRange<Int>] = []
        var takenAddresses: [ClosedRange<IPAddress>] = []
        var aliasLines: [Int] = []
        for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
            .enumerated() {
            let lineNo = n + 1
            let content = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let f = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if f.isEmpty { continue }
            func fail(_ r: String) -> ParseError { ParseError(line: lineNo, reason: r) }
            guard f.count == 3 else { throw fail("expected 3 fields (ID address count|ALIAS), found \(f.count)") }
            guard let idv = Int(f[0]), let id = NodeID(idv) else { throw fail("'\(f[0])' is not a node ID (1-65535)") }
            guard let addr = IPAddress(String(f[1])) else { throw fail("'\(f[1])' is not an IPv4 or IPv6 address") }
            if f[2].uppercased() == "ALIAS" {
                out.append(.alias(id: id, address: addr))
                aliasLines.append(lineNo)
                continue
            }
            guard let count = Int(f[2]), count >= 1 else { throw fail("'\(f[2])' is not a count (1 or more) or ALIAS") }
            // (compared without computing idv + count, which could overflow for a huge count)
            guard count <= 65536 - idv else { throw fail("\(count) IDs from \(idv) run past 65535") }
            guard addr.advanced(by: UInt64(count - 1)) != nil else { throw fail("addresses run past the end of the address space") }
            let r = idv...(idv + count - 1)
            if let o = taken.first(where: { $0.overlaps(r) }) {
                throw fail("IDs \(r.lowerBound)..\(r.upperBound) overlap IDs \(o.lowerBound)..\(o.upperBound) of an earlier line")
            }
            let addrs = addr...addr.advanced(by: UInt64(count - 1))!
            if let o = takenAddresses.first(where: { $0.overlaps(addrs) }) {
                throw fail(
                    "addresses \(addrs.lowerBound)..\(addrs.upperBound) overlap addresses "
                        + "\(o.lowerBound)..\(o.upperBound) of an earlier line")
            }
            taken.append(r)
            takenAddresses.append(addrs)
            out.append(.range(first: id, address: addr, count: count))
        }
        var aliasIndex = 0
        for l in out {
            guard case .alias(let id, _) = l else { continue }
            defer { aliasIndex += 1 }
            if !taken.contains(where: { $0.contains(Int(id.rawValue)) }) {
                throw ParseError(line: aliasLines[aliasIndex], reason: "ALIAS for node \(id), which no range line defines")
            }
        }
        return out
    }

    /// Turns parsed lines into claims with explicit IDs (a static map seeds discd).
    public static func claims(_ lines: [Line], incarnation: UInt64 = 0) -> [NodeClaim] {
        var byID: [UInt16: NodeClaim] = [:]
        var order: [UInt16] = []
        for l in lines {
            if case .range(let f, let a, let c) = l {
                for k in 0..<c {
                    let id = NodeID(Int(f.rawValue) + k)!
                    byID[id.rawValue] = NodeClaim(
                        address: a.advanced(by: UInt64(k))!, preferredID: id, explicitID: true, incarnation: incarnation)
                    order.append(id.rawValue)
                }
            }
        }
        for l in lines {
            if case .alias(let id, let a) = l { byID[id.rawValue]?.aliases.append(Alias(a, source: .configured)) }
        }
        return order.compactMap { byID[$0] }
    }
}
