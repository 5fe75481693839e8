import NodeMap
import Testing

struct RingTests {
    /// A map whose nodes hold exactly the given explicit IDs (address 10.9.x.y for ID k).
    static func map(ids: [Int]) -> NodeMap {
        var m = NodeMap()
        for k in ids { m.observe(NodeClaim(address: addr(k), preferredID: nid(k), explicitID: true), now: 1) }
        return m
    }
    static func addr(_ k: Int) -> IPAddress { IPAddress(v4: 0x0A09_0000 | UInt32(k)) }

    @Test func successorAndPredecessorWrap() {
        let m = Self.map(ids: [5, 10, 65530])
        #expect(m.successor(of: nid(5)) == nid(10))
        #expect(m.successor(of: nid(10)) == nid(65530))
        #expect(m.successor(of: nid(65530)) == nid(5))
        #expect(m.predecessor(of: nid(5)) == nid(65530))
        #expect(m.predecessor(of: nid(65530)) == nid(10))
        #expect(m.predecessor(of: nid(10)) == nid(5))
        // From an ID that is not a member.
        #expect(m.successor(of: nid(7)) == nid(10))
        #expect(m.predecessor(of: nid(7)) == nid(5))
        #expect(m.successor(of: nid(65535)) == nid(5))
        #expect(m.predecessor(of: nid(1)) == nid(65530))
        #expect(m.memberIDs() == [nid(5), nid(10), nid(65530)])
    }

    @Test func extremesAndWordBoundaries() {
        let m = Self.map(ids: [1, 63, 64, 127, 128, 65535])
        #expect(m.successor(of: nid(65535)) == nid(1))
        #expect(m.predecessor(of: nid(1)) == nid(65535))
        #expect(m.successor(of: nid(63)) == nid(64))
        #expect(m.predecessor(of: nid(64)) == nid(63))
        #expect(m.successor(of: nid(127)) == nid(128))
        #expect(m.predecessor(of: nid(128)) == nid(127))
        #expect(m.successor(of: nid(128)) == nid(65535))
        #expect(m.predecessor(of: nid(65535)) == nid(128))
    }

    @Test func emptyAndSingleRing() {
        #expect(NodeMap().successor(of: nid(3)) == nil)
        #expect(NodeMap().predecessor(of: nid(3)) == nil)
        let one = Self.map(ids: [300])
        #expect(one.successor(of: nid(300)) == nil)
        #expect(one.predecessor(of: nid(300)) == nil)
        #expect(one.successor(of: nid(1)) == nid(300))
        #expect(one.predecessor(of: nid(1)) == nid(300))
    }

    @Test func deadAndLeftNodesLeaveTheRingSuspectStays() {
        var m = Self.map(ids: [5, 10, 20, 30])
        m.setState(Self.addr(10), to: .suspect)
        #expect(m.successor(of: nid(5)) == nid(10))
        m.setState(Self.addr(10), to: .dead)
        #expect(m.successor(of: nid(5)) == nid(20))
        #expect(m.predecessor(of: nid(20)) == nid(5))
        #expect(!m.isMember(nid(10)))
        m.setState(Self.addr(30), to: .left)
        #expect(m.successor(of: nid(20)) == nid(5))
        #expect(m.memberIDs() == [nid(5), nid(20)])
        #expect(m.memberCount == 2)
        // Back with a higher incarnation: on the ring again under the same ID.
        m.observe(NodeClaim(address: Self.addr(10), preferredID: nid(10), explicitID: true, incarnation: 1), now: 2)
        #expect(m.successor(of: nid(5)) == nid(10))
        m.remove(Self.addr(20))
        #expect(m.successor(of: nid(10)) == nid(5))
        checkConsistent(m)
    }

    @Test func randomRingsMatchASortedScan() {
        var rng = SeededRNG(seed: 0xD15C_0002)
        for _ in 0..<100 {
            let ids = Array(
                Set(
                    (0..<Int.random(in: 1...50, using: &rng)).map { _ in
                        Bool.random(using: &rng)
                            ? Int.random(in: 1...65535, using: &rng) : Int.random(in: 1...200, using: &rng)
                    }))
            var m = Self.map(ids: ids)
            for k in ids where Int.random(in: 0..<4, using: &rng) == 0 {
                m.setState(Self.addr(k), to: [.dead, .left, .suspect].randomElement(using: &rng)!)
            }
            let members = m.nodes.filter { $0.state.isMember }.map { Int($0.id.rawValue) }.sorted()
            for _ in 0..<20 {
                let q = Int.random(in: 1...65535, using: &rng)
                let others = members.filter { $0 != q }
                let succ = others.first { $0 > q } ?? others.first
                let pred = others.last { $0 < q } ?? others.last
                #expect(m.successor(of: nid(q)).map { Int($0.rawValue) } == succ)
                #expect(m.predecessor(of: nid(q)).map { Int($0.rawValue) } == pred)
            }
            checkConsistent(m)
        }
    }
}

struct StateTests {
    let a = ip("10.0.0.1")

    @Test func unknownNodeIsNeverCreatedBySetState() {
        var m = NodeMap()
        #expect(m.setState(a, to: .dead).isEmpty)
        #expect(m.setState(a, to: .alive).isEmpty)
        #expect(m.isEmpty)
        #expect(m.generation == 0)
    }

    @Test func allowedTransitions() {
        var m = NodeMap()
        m.observe(NodeClaim(address: a, incarnation: 1), now: 1)
        #expect(
            m.setState(a, to: .suspect) == [
                .stateChanged(address: a, id: nid(1), from: .alive, to: .suspect, incarnation: 1)
            ])
        #expect(m.setState(a, to: .alive).count == 1)
        #expect(m.setState(a, to: .alive).isEmpty)  // already alive
        #expect(m.setState(a, to: .dead).count == 1)
        #expect(m[a]?.state == .dead)
        // Dead stays dead for setState.
        for s in NodeState.allCases { #expect(m.setState(a, to: s).isEmpty) }
        #expect(m[a]?.state == .dead)
    }

    @Test func transitionTable() {
        let allowed: Set<[UInt8]> = [[1, 2], [2, 1], [1, 3], [2, 3], [1, 4], [2, 4]]
        for f in NodeState.allCases {
            for t in NodeState.allCases {
                #expect(NodeMap.allowed(from: f, to: t) == allowed.contains([f.rawValue, t.rawValue]), "\(f) → \(t)")
            }
        }
    }

    @Test func deadComesBackOnlyWithAHigherIncarnation() {
        var m = NodeMap()
        m.observe(NodeClaim(address: a, incarnation: 3), now: ms(1))
        m.setState(a, to: .dead)
        #expect(m.observe(NodeClaim(address: a, incarnation: 3), now: ms(2)).isEmpty)
        #expect(m.observe(NodeClaim(address: a, incarnation: 2), now: ms(2)).isEmpty)
        #expect(m[a]?.state == .dead)
        #expect(m[a]?.lastHeard == ms(1))
        let changes = m.observe(NodeClaim(address: a, incarnation: 4), now: ms(5))
        #expect(changes.contains(.stateChanged(address: a, id: nid(1), from: .dead, to: .alive, incarnation: 4)))
        #expect(m[a]?.state == .alive)
        #expect(m[a]?.lastHeard == ms(5))
        #expect(m.isMember(nid(1)))
    }

    @Test func leftComesBackOnlyWithAHigherIncarnation() {
        var m = NodeMap()
        m.observe(NodeClaim(address: a), now: ms(1))
        m.setState(a, to: .left)
        #expect(m.observe(NodeClaim(address: a), now: ms(2)).isEmpty)
        #expect(m[a]?.state == .left)
        m.observe(NodeClaim(address: a, incarnation: 1), now: ms(3))
        #expect(m[a]?.state == .alive)
    }

    @Test func staleClaimsAndDecisionsAreIgnored() {
        var m = NodeMap()
        m.observe(NodeClaim(address: a, aliases: [Alias(ip("10.1.0.1"), source: .interface)], incarnation: 5), now: ms(1))
        let g = m.generation
        #expect(m.observe(NodeClaim(address: a, incarnation: 4), now: ms(9)).isEmpty)
        #expect(m[a]?.aliases.count == 1)
        #expect(m[a]?.lastHeard == ms(1))
        // A suspicion about incarnation 4 is about an older life: ignored.
        #expect(m.setState(a, to: .suspect, incarnation: 4).isEmpty)
        #expect(m.generation == g)
        #expect(m.setState(a, to: .suspect, incarnation: 5).count == 1)
        // Refutation: a higher incarnation brings the suspect back alive.
        let c = m.observe(NodeClaim(address: a, incarnation: 6), now: ms(2))
        #expect(c.contains(.stateChanged(address: a, id: nid(1), from: .suspect, to: .alive, incarnation: 6)))
    }

    @Test func updatesAreReportedAndGenerationBumps() {
        var m = NodeMap()
        m.observe(NodeClaim(address: a), now: ms(1))
        let g = m.generation
        #expect(m.observe(NodeClaim(address: a), now: ms(2)).isEmpty)
        #expect(m.generation == g)
        #expect(m[a]?.lastHeard == ms(2))
        let c = m.observe(NodeClaim(address: a, heartbeatPort: 7000), now: ms(3))
        #expect(c.count == 1)
        #expect(m[a]?.heartbeatPort == 7000)
        #expect(m.generation == g + 1)
        m.touch(a, now: ms(10))
        #expect(m[a]?.lastHeard == ms(10))
        m.touch(a, now: ms(4))
        #expect(m[a]?.lastHeard == ms(10))
    }

    @Test func aliasesAreFound() {
        var m = NodeMap()
        m.observe(NodeClaim(address: a, aliases: [Alias(ip("192.168.0.1"), source: .routed)]), now: 1)
        #expect(m.node(anyAddress: ip("192.168.0.1"))?.address == a)
        #expect(m.node(anyAddress: a)?.address == a)
        #expect(m.node(anyAddress: ip("192.168.0.2")) == nil)
        #expect(m.observe(NodeClaim(address: .zero), now: 1).isEmpty)
    }
}

/// The map keeps the time heard in whole milliseconds (HeardClockTests): times given in them read back exactly.
private func ms(_ v: UInt64) -> Instant { Instant(nanos: v * 1_000_000) }
