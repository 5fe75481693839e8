@testable import NodeMap
import Testing

/// The node map's storage (columns, open-addressing index, direct owner table) against the map as
/// it was with `[Node]` and dictionaries (`ReferenceNodeMap`): the same random operations, with
/// colliding and underivable IDs, explicit claims, IPv6 addresses arriving mid-run, aliases,
/// capabilities, deaths and removals, must give the same changes, nodes, IDs, ring and digest.
struct NodeMapDifferentialTests {
    static func addresses(_ rng: inout SeededRNG, ipv6: Bool) -> [IPAddress] {
        var out: [IPAddress] = []
        for k in 0..<90 {
            // 10.K%3.K/3%5.(K%25): derived IDs collide across the second octet; .0 gives none.
            out.append(ip("10.\(k % 3).\(k / 3 % 5).\(k % 25)"))
        }
        if ipv6 {
            for k in 0..<20 { out.append(ip("fd00::\(String(k % 7, radix: 16)):\(String(k + 1, radix: 16))")) }
        }
        out.shuffle(using: &rng)
        return out
    }

    func claim(_ a: IPAddress, _ all: [IPAddress], _ rng: inout SeededRNG) -> NodeClaim {
        let explicit = Int.random(in: 0..<12, using: &rng) == 0
        let aliases: [Alias] =
            Int.random(in: 0..<6, using: &rng) == 0
            ? [Alias(all.randomElement(using: &rng)!, source: .interface)] : []
        let caps: [Capability] =
            Int.random(in: 0..<8, using: &rng) == 0 ? [.rdma(gidHi: 1, gidLo: UInt64(a.lo), qpn: 7, qkey: 9)] : []
        return NodeClaim(
            address: a, preferredID: explicit ? nid(Int.random(in: 1...40, using: &rng)) : nil, explicitID: explicit,
            aliases: aliases, incarnation: UInt64.random(in: 0...5, using: &rng),
            hops: UInt8.random(in: 0...1, using: &rng), heartbeatPort: Int.random(in: 0..<4, using: &rng) == 0 ? 7001 : 7000,
            capabilities: caps)
    }

    func expectSame(_ m: NodeMap, _ r: ReferenceNodeMap, _ step: Int, _ rng: inout SeededRNG) {
        #expect(m.count == r.count, "step \(step)")
        #expect(m.nodes.sorted { $0.address < $1.address } == r.nodes.sorted { $0.address < $1.address }, "step \(step)")
        #expect(m.nodes.map(\.address) == r.nodes.map(\.address), "slot order, step \(step)")
        #expect(m.generation == r.generation)
        #expect(m.memberCount == r.memberCount)
        #expect(m.digest == r.digest && m.digestMembers == r.digestMembers)
        #expect(m.collisionLosers == r.collisionLosers)
        #expect(m.loserProbes == r.loserProbes)
        for n in r.nodes {
            #expect(m[n.address] == n)
            #expect(m.brief(n.address) == r.brief(n.address))
            #expect(m.node(id: n.id) == r.node(id: n.id))
            for al in n.aliases { #expect(m.node(anyAddress: al.address) == r.node(anyAddress: al.address)) }
        }
        for _ in 0..<8 {
            let id = nid(Int.random(in: 1...65535, using: &rng) % 64 + 1)
            #expect(m.successor(of: id) == r.successor(of: id), "step \(step)")
            #expect(m.predecessor(of: id) == r.predecessor(of: id))
            #expect(m.isMember(id) == r.isMember(id))
        }
        #expect(m.memberIDs() == r.memberIDs())
    }

    @Test(arguments: [(1, false), (2, false), (3, true), (4, true), (5, true)])
    func sameAnswersAsTheReferenceMap(seed: UInt64, ipv6: Bool) {
        var rng = SeededRNG(seed: seed)
        let all = Self.addresses(&rng, ipv6: false)
        let v6 = ipv6 ? Self.addresses(&rng, ipv6: true).filter { !$0.isIPv4 } : []
        var m = NodeMap(capacityHint: seed % 2 == 0 ? 100 : 0)
        var r = ReferenceNodeMap()
        for step in 0..<3000 {
            // IPv6 addresses join after the first thousand steps: the keys widen mid-run.
            let pool = step > 1000 ? all + v6 : all
            let a = pool.randomElement(using: &rng)!
            // Whole milliseconds: the map keeps the time heard in them (HeardClockTests).
            let now = Instant(nanos: UInt64(step) * 1_000_000)
            switch Int.random(in: 0..<16, using: &rng) {
            case 0...6:
                let c = claim(a, pool, &rng)
                #expect(m.observe(c, now: now) == r.observe(c, now: now), "observe, step \(step)")
            case 7:
                m.touch(a, now: now)
                r.touch(a, now: now)
            case 8:
                let inc = UInt64.random(in: 0...7, using: &rng)
                #expect(m.heardAtIncarnation(a, inc, now: now) == r.heardAtIncarnation(a, inc, now: now))
            case 9: #expect(m.setState(a, to: .suspect) == r.setState(a, to: .suspect))
            case 10: #expect(m.setState(a, to: .alive) == r.setState(a, to: .alive))
            case 11:
                let inc = UInt64.random(in: 0...5, using: &rng)
                #expect(m.setState(a, to: .dead, incarnation: inc) == r.setState(a, to: .dead, incarnation: inc))
            case 12: #expect(m.setState(a, to: .left) == r.setState(a, to: .left))
            default: #expect(m.remove(a) == r.remove(a), "remove, step \(step)")
            }
            if step % 50 == 0 || step > 2950 { expectSame(m, r, step, &rng) }
        }
        // Empty it again: every removal path, down to nothing.
        for a in r.nodes.map(\.address) { #expect(m.remove(a) == r.remove(a)) }
        expectSame(m, r, -1, &rng)
        #expect(m.isEmpty)
    }

    @Test func aFullAddressRangeStaysConsistent() {
        // Thousands of sequential addresses (the simulator's 10.0.B.C), removed in a scattered order:
        // the index's backward-shift deletion and the owner table must keep every look-up right.
        var m = NodeMap(capacityHint: 5000)
        var r = ReferenceNodeMap()
        let addrs = (1...5000).map { IPAddress(v4: 0x0A00_0000 + UInt32($0)) }
        for (k, a) in addrs.enumerated() {
            let c = NodeClaim(address: a, incarnation: 1)
            let now = Instant(nanos: UInt64(k) * 1_000_000)
            #expect(m.observe(c, now: now) == r.observe(c, now: now))
        }
        var rng = SeededRNG(seed: 77)
        for a in addrs.shuffled(using: &rng).prefix(3000) { #expect(m.remove(a) == r.remove(a)) }
        #expect(m.nodes == r.nodes)
        for a in addrs { #expect(m.brief(a) == r.brief(a)) }
        for id in 1...5001 { #expect(m.node(id: nid(id)) == r.node(id: nid(id))) }
    }
}
