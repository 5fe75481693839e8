import NodeMap
import Testing

/// The cores' own seeded generator, so every randomized test is reproducible.
typealias SeededRNG = SplitMix64

func ip(_ s: String) -> IPAddress {
    guard let a = IPAddress(s) else { fatalError("bad test address \(s)") }
    return a
}

func nid(_ v: Int) -> NodeID { NodeID(v)! }

/// The ID assignment as docs/NODEMAP.md states it, computed from scratch from a set of claims:
/// per preferred ID the winner is the explicit claim first, then the lowest address; every other
/// node (losers and nodes without a preferred ID), in address order, takes the first ID from
/// `NodeMap.probeStart` onwards (+1, 65535 wraps to 1) not held by a winner or an earlier loser.
func referenceAssignment(_ claims: [NodeClaim]) -> [IPAddress: UInt16] {
    var byPreferred: [UInt16: [NodeClaim]] = [:]
    var losers: [IPAddress] = []
    for c in claims {
        if let p = c.preferredID { byPreferred[p.rawValue, default: []].append(c) } else { losers.append(c.address) }
    }
    var out: [IPAddress: UInt16] = [:]
    var held = Set<UInt16>()
    for (p, cs) in byPreferred {
        let ranked = cs.sorted { a, b in a.explicitID != b.explicitID ? a.explicitID : a.address < b.address }
        out[ranked[0].address] = p
        held.insert(p)
        losers.append(contentsOf: ranked.dropFirst().map(\.address))
    }
    for a in losers.sorted() {
        var c = Int(NodeMap.probeStart(a))
        while held.contains(UInt16(c)) { c = c % 65535 + 1 }
        held.insert(UInt16(c))
        out[a] = UInt16(c)
    }
    return out
}

func assignment(_ m: NodeMap) -> [IPAddress: UInt16] {
    Dictionary(uniqueKeysWithValues: m.nodes.map { ($0.address, $0.id.rawValue) })
}

/// Checks the map's internal indexes agree with its nodes: ID owner, member bitmap, loser list.
func checkConsistent(_ m: NodeMap, sourceLocation: SourceLocation = #_sourceLocation) {
    let ids = m.nodes.map(\.id)
    #expect(Set(ids).count == ids.count, "assignment not injective", sourceLocation: sourceLocation)
    for n in m.nodes {
        #expect(m.node(id: n.id)?.address == n.address, "owner of \(n.id)", sourceLocation: sourceLocation)
        #expect(m.isMember(n.id) == n.state.isMember, "ring bit of \(n.id)", sourceLocation: sourceLocation)
    }
    let members = m.nodes.filter { $0.state.isMember }.map(\.id).sorted()
    #expect(m.memberIDs() == members, sourceLocation: sourceLocation)
    #expect(m.memberCount == members.count, sourceLocation: sourceLocation)
    let losers = m.nodes.filter { $0.preferredID != $0.id }.map(\.address).sorted()
    #expect(m.collisionLosers == losers, sourceLocation: sourceLocation)
}
