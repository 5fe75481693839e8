import NodeMap
import Testing

struct IDDerivationTests {
    @Test func ipv4UsesTheLastTwoOctets() {
        #expect(NodeID.derived(from: ip("192.168.10.220")) == nid(2780))
        #expect(NodeID.derived(from: ip("10.1.5.7")) == nid(1287))
        #expect(NodeID.derived(from: ip("10.0.0.1")) == nid(1))
        #expect(NodeID.derived(from: ip("10.0.255.255")) == nid(65535))
    }

    @Test func zeroLowBitsDeriveNothing() {
        #expect(NodeID.derived(from: ip("10.1.0.0")) == nil)
        #expect(NodeID.derived(from: ip("fd00::1:0")) == nil)
        #expect(NodeClaim(address: ip("10.1.0.0")).preferredID == nil)
    }

    @Test func ipv6UsesTheLow16Bits() {
        #expect(NodeID.derived(from: ip("fd00::abcd")) == nid(0xABCD))
        #expect(NodeID.derived(from: ip("fe80::1234:5678:9abc:def0")) == nid(0xDEF0))
        #expect(NodeID.derived(from: ip("2001:db8::ffff")) == nid(65535))
    }

    @Test func nodeIDBounds() {
        #expect(NodeID(0) == nil)
        #expect(NodeID(65536) == nil)
        #expect(NodeID(rawValue: 0) == nil)
        #expect(NodeID(65535)?.rawValue == 65535)
    }

    @Test func claimPrefersExplicitID() {
        let c = NodeClaim(address: ip("10.1.5.7"), preferredID: nid(9), explicitID: true)
        #expect(c.preferredID == nid(9) && c.explicitID)
        // "explicit" without an ID is just a derived claim.
        let d = NodeClaim(address: ip("10.1.5.7"), preferredID: nil, explicitID: true)
        #expect(d.preferredID == nil && !d.explicitID)
    }
}

struct CollisionTests {
    @Test func lowerAddressWinsADerivedCollision() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.2.5.7")), now: 1)
        let changes = m.observe(NodeClaim(address: ip("10.1.5.7")), now: 2)
        #expect(m[ip("10.1.5.7")]?.id == nid(1287))
        let loser = m[ip("10.2.5.7")]!
        #expect(loser.id != nid(1287))
        #expect(loser.preferredID == nid(1287))
        #expect(changes.contains(.collision(id: nid(1287), winner: ip("10.1.5.7"), loser: ip("10.2.5.7"))))
        #expect(changes.contains(.idChanged(address: ip("10.2.5.7"), from: nid(1287), to: loser.id)))
        #expect(m.collisionLosers == [ip("10.2.5.7")])
        #expect(loser.id == nid(Int(NodeMap.probeStart(ip("10.2.5.7")))))
        checkConsistent(m)
    }

    @Test func collisionIsTheSameInEitherOrder() {
        var a = NodeMap()
        a.observe(NodeClaim(address: ip("10.1.5.7")), now: 1)
        let changes = a.observe(NodeClaim(address: ip("10.2.5.7")), now: 2)
        #expect(changes.contains(.collision(id: nid(1287), winner: ip("10.1.5.7"), loser: ip("10.2.5.7"))))
        // The newcomer is reported as added with its substitute; no idChanged for it.
        #expect(!changes.contains { if case .idChanged = $0 { true } else { false } })
        var b = NodeMap()
        b.observe(NodeClaim(address: ip("10.2.5.7")), now: 1)
        b.observe(NodeClaim(address: ip("10.1.5.7")), now: 2)
        #expect(assignment(a) == assignment(b))
    }

    @Test func explicitBeatsDerived() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.1.5.7")), now: 1)
        let changes = m.observe(NodeClaim(address: ip("10.2.5.7"), preferredID: nid(1287), explicitID: true), now: 2)
        #expect(m[ip("10.2.5.7")]?.id == nid(1287))
        #expect(m[ip("10.1.5.7")]?.id != nid(1287))
        #expect(changes.contains(.collision(id: nid(1287), winner: ip("10.2.5.7"), loser: ip("10.1.5.7"))))
        checkConsistent(m)
    }

    @Test func winnerLeavingHandsTheIDToTheNextClaimant() {
        var m = NodeMap()
        for a in ["10.1.5.7", "10.2.5.7", "10.3.5.7"] { m.observe(NodeClaim(address: ip(a)), now: 1) }
        let changes = m.remove(ip("10.1.5.7"))
        #expect(m[ip("10.2.5.7")]?.id == nid(1287))
        #expect(changes.contains { if case .idChanged(ip("10.2.5.7"), _, nid(1287)) = $0 { true } else { false } })
        #expect(m.collisionLosers == [ip("10.3.5.7")])
        checkConsistent(m)
    }

    @Test func substituteHolderYieldsToARealClaim() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.1.5.7")), now: 1)
        m.observe(NodeClaim(address: ip("10.2.5.7")), now: 1)
        let sub = m[ip("10.2.5.7")]!.id
        let changes = m.observe(NodeClaim(address: ip("172.16.0.9"), preferredID: sub, explicitID: true), now: 2)
        #expect(m[ip("172.16.0.9")]?.id == sub)
        let moved = m[ip("10.2.5.7")]!.id
        #expect(moved != sub && moved != nid(1287))
        #expect(changes.contains(.idChanged(address: ip("10.2.5.7"), from: sub, to: moved)))
        checkConsistent(m)
    }

    @Test func underivableAddressGetsASubstitute() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.1.0.0")), now: 1)
        let n = m[ip("10.1.0.0")]!
        #expect(n.preferredID == nil)
        #expect(n.id == nid(Int(NodeMap.probeStart(ip("10.1.0.0")))))
        #expect(m.collisionLosers == [ip("10.1.0.0")])
    }

    @Test func idIsStableAcrossRestart() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.1.5.7")), now: 1)
        m.observe(NodeClaim(address: ip("10.2.5.7"), incarnation: 1), now: 1)
        let winner = m[ip("10.1.5.7")]!.id
        let loser = m[ip("10.2.5.7")]!.id
        // Both restart (higher incarnation), the loser also dies and comes back.
        var changes = m.observe(NodeClaim(address: ip("10.2.5.7"), incarnation: 2), now: 2)
        changes += m.observe(NodeClaim(address: ip("10.1.5.7"), incarnation: 5), now: 2)
        m.setState(ip("10.2.5.7"), to: .dead)
        changes += m.observe(NodeClaim(address: ip("10.2.5.7"), incarnation: 3), now: 3)
        #expect(m[ip("10.1.5.7")]?.id == winner)
        #expect(m[ip("10.2.5.7")]?.id == loser)
        #expect(m[ip("10.2.5.7")]?.state == .alive)
        #expect(!changes.contains { if case .idChanged = $0 { true } else { false } })
        #expect(!changes.contains { if case .collision = $0 { true } else { false } })
        checkConsistent(m)
    }

    @Test func claimChangeReentersTheAssignment() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.1.5.7")), now: 1)
        m.observe(NodeClaim(address: ip("10.2.5.7")), now: 1)
        // The loser is reconfigured with an explicit free ID.
        m.observe(NodeClaim(address: ip("10.2.5.7"), preferredID: nid(42), explicitID: true, incarnation: 1), now: 2)
        #expect(m[ip("10.2.5.7")]?.id == nid(42))
        #expect(m.collisionLosers.isEmpty)
        // And the winner is reconfigured onto 42 explicitly too: the lower address wins among explicit claims.
        m.observe(NodeClaim(address: ip("10.1.5.7"), preferredID: nid(42), explicitID: true, incarnation: 1), now: 3)
        #expect(m[ip("10.1.5.7")]?.id == nid(42))
        #expect(m.collisionLosers == [ip("10.2.5.7")])
        checkConsistent(m)
    }

    /// Addresses drawn from a small space so that derived IDs collide often; explicit IDs sit on
    /// derived IDs and on losers' probe paths.
    static func randomClaims(_ rng: inout SeededRNG) -> [NodeClaim] {
        var addrs = Set<IPAddress>()
        let n = Int.random(in: 1...40, using: &rng)
        while addrs.count < n {
            if Int.random(in: 0..<5, using: &rng) == 0 {
                let low = [0x0507, 0x0508, 0, 0x0001].randomElement(using: &rng)!
                addrs.insert(
                    IPAddress(
                        hi: 0xFD00_0000_0000_0000, lo: UInt64(Int.random(in: 0..<4, using: &rng)) << 16 | UInt64(low)))
            } else {
                let a = [10, 172, 192].randomElement(using: &rng)!
                let b = Int.random(in: 1...4, using: &rng)
                let c = [0, 5, 6].randomElement(using: &rng)!
                let d = [0, 7, 8].randomElement(using: &rng)!
                addrs.insert(ip("\(a).\(b).\(c).\(d)"))
            }
        }
        let sorted = addrs.sorted()
        return sorted.map { a in
            switch Int.random(in: 0..<10, using: &rng) {
            case 0, 1:
                // Explicit ID on a commonly derived one.
                return NodeClaim(
                    address: a, preferredID: nid([1287, 1288, 1543, 1544, 7].randomElement(using: &rng)!),
                    explicitID: true)
            case 2:
                // Explicit ID on (or next to) some node's probe start: a winner on a loser's probe path.
                let other = sorted.randomElement(using: &rng)!
                let p = (Int(NodeMap.probeStart(other)) - 1 + Int.random(in: 0...1, using: &rng)) % 65535 + 1
                return NodeClaim(address: a, preferredID: nid(p), explicitID: true)
            default:
                return NodeClaim(address: a)
            }
        }
    }

    @Test func assignmentIsOrderIndependentAndInjective() {
        var rng = SeededRNG(seed: 0xD15C_0001)
        for iteration in 0..<200 {
            let claims = Self.randomClaims(&rng)
            let expected = referenceAssignment(claims)
            #expect(Set(expected.values).count == expected.count)
            // Extra nodes that come and go, and first claims that are later replaced.
            let transient = Self.randomClaims(&rng).filter { c in !claims.contains { $0.address == c.address } }
            for round in 0..<3 {
                var m = NodeMap()
                var ops: [(kind: Int, claim: NodeClaim)] = claims.map { (0, $0) } + transient.map { (1, $0) }
                ops.shuffle(using: &rng)
                var pendingRemoval: [IPAddress] = []
                for (kind, c) in ops {
                    if kind == 1 {
                        m.observe(c, now: 1)
                        pendingRemoval.append(c.address)
                    } else if Int.random(in: 0..<4, using: &rng) == 0 {
                        // First seen with some other claim, then the real one after a restart.
                        let wrong = NodeClaim(
                            address: c.address, preferredID: nid(Int.random(in: 1280...1290, using: &rng)),
                            explicitID: Bool.random(using: &rng))
                        m.observe(wrong, now: 1)
                        var real = c
                        real.incarnation = 1
                        m.observe(real, now: 2)
                    } else {
                        m.observe(c, now: 1)
                    }
                    if !pendingRemoval.isEmpty && Int.random(in: 0..<3, using: &rng) == 0 {
                        m.remove(pendingRemoval.remove(at: Int.random(in: 0..<pendingRemoval.count, using: &rng)))
                    }
                    if Int.random(in: 0..<8, using: &rng) == 0, let any = m.nodes.randomElement(using: &rng) {
                        m.setState(any.address, to: [.suspect, .dead, .left].randomElement(using: &rng)!)
                    }
                }
                for a in pendingRemoval.shuffled(using: &rng) { m.remove(a) }
                let got = assignment(m)
                #expect(got == expected, "iteration \(iteration) round \(round)")
                if got != expected { return }
                checkConsistent(m)
            }
        }
    }

    @Test func loserMovesOnlyWhenAWinnerTakesItsSubstitute() {
        var m = NodeMap()
        m.observe(NodeClaim(address: ip("10.1.5.7")), now: 1)
        m.observe(NodeClaim(address: ip("10.2.5.7")), now: 1)
        let sub = m[ip("10.2.5.7")]!.id
        // Unrelated nodes come and go: the loser keeps its substitute.
        for k in 1...20 {
            let a = ip("192.168.\(k).\(k)")
            m.observe(NodeClaim(address: a), now: 2)
            #expect(m[ip("10.2.5.7")]?.id == sub)
            m.remove(a)
        }
        #expect(m[ip("10.2.5.7")]?.id == sub)
    }
}

/// Defect 2 of the first wave: remote input must not crash the map, nor cost quadratic work.
@Suite struct IDSpaceLimitTests {
    @Test func fullIDSpaceRefusesNewNodesWithoutTrapping() {
        var map = NodeMap()
        // 65535 nodes whose derived IDs are all distinct fill every ID.
        for id in 1...65535 {
            map.observe(NodeClaim(address: IPAddress(v4: 0x0A00_0000 | UInt32(id))), now: 0)
        }
        #expect(map.count == 65535)
        #expect(map.refusedFull == 0)
        let extra = map.observe(NodeClaim(address: IPAddress(v4: 0x0B00_0001)), now: 1)
        #expect(extra.isEmpty)
        #expect(map.count == 65535)
        #expect(map.refusedFull == 1)
        // After one leaves, the next one fits.
        map.remove(IPAddress(v4: 0x0A00_0005))
        #expect(!map.observe(NodeClaim(address: IPAddress(v4: 0x0B00_0001)), now: 2).isEmpty)
        #expect(map.count == 65535)
    }

    @Test func floodOfCollidingClaimsCostsLinearProbes() {
        var map = NodeMap()
        let n = 3000
        for i in 0..<n {
            // Every node claims ID 7 explicitly: one winner, n-1 losers.
            map.observe(NodeClaim(address: IPAddress(v4: 0x0A00_0000 | UInt32(i + 1)), preferredID: NodeID(7), explicitID: true), now: 0)
        }
        #expect(map.collisionLosers.count == n - 1)
        #expect(Set(map.nodes.map(\.id)).count == n)
        // Each loser is probed about once (plus the few an earlier loser's move displaced), not once
        // per later insert (which would be about n²/2 = 4.5 million).
        #expect(map.loserProbes <= 4 * n, "\(map.loserProbes) probes for \(n) colliding claims")
    }
}
