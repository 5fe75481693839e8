import NodeMap
import Testing

/// The anti-entropy digest: kept incrementally, it must equal a recomputation from the map's nodes
/// after any sequence of changes, and two maps holding the same members at the same incarnations
/// must agree whatever order the news came in.
struct DigestTests {
    func recomputed(_ map: NodeMap) -> (digest: UInt64, members: Int, buckets: [UInt64]) {
        var d: UInt64 = 0
        var buckets = [UInt64](repeating: 0, count: NodeMap.digestBuckets)
        var members = 0
        for n in map.nodes where n.state.isMember {
            let t = NodeMap.digestTerm(n.address, incarnation: n.incarnation)
            d &+= t
            buckets[NodeMap.digestBucket(n.address)] &+= t
            members += 1
        }
        return (d, members, buckets)
    }

    @Test(arguments: [1, 2, 3, 4]) func incrementalDigestEqualsARecomputation(seed: UInt64) {
        var rng = SeededRNG(seed: seed)
        var map = NodeMap()
        // Few addresses, colliding derived IDs (x.y.1.z and x.y.2.z share nothing, 10.0.K.5 collide on
        // K*256+5 across the second octet), so claims, collisions, deaths and removals mix.
        let addresses = (0..<60).map { ip("10.\($0 % 3).\($0 / 3 % 4).\($0 % 20 + 1)") }
        for step in 0..<4000 {
            let a = addresses.randomElement(using: &rng)!
            let inc = UInt64.random(in: 0...6, using: &rng)
            switch Int.random(in: 0..<10, using: &rng) {
            case 0...4:
                map.observe(NodeClaim(address: a, incarnation: inc), now: Instant(nanos: UInt64(step)))
            case 5: map.setState(a, to: .suspect)
            case 6: map.setState(a, to: .alive)
            case 7: map.setState(a, to: .dead, incarnation: inc)
            case 8: map.setState(a, to: .left)
            default: map.remove(a)
            }
            let r = recomputed(map)
            #expect(map.digest == r.digest, "step \(step)")
            #expect(map.digestMembers == r.members)
            if step % 500 == 0 {
                #expect((0..<NodeMap.digestBuckets).allSatisfy { map.bucketSum($0) == r.buckets[$0] })
            }
        }
    }

    @Test func orderDoesNotMatterAndStateDoes() {
        let claims = (1...200).map { NodeClaim(address: ip("10.2.\($0 / 100).\($0 % 100 + 1)"), incarnation: UInt64($0 % 5)) }
        var a = NodeMap()
        var b = NodeMap()
        for c in claims { a.observe(c, now: Instant(nanos: 1)) }
        var rng = SeededRNG(seed: 9)
        for c in claims.shuffled(using: &rng) { b.observe(c, now: Instant(nanos: 2)) }
        #expect(a.digest == b.digest)
        #expect(a.saltedBucketSums(salt: 77) == b.saltedBucketSums(salt: 77))
        let x = claims[17].address
        // Suspicion is local: the digest ignores it.
        b.setState(x, to: .suspect)
        #expect(a.digest == b.digest)
        // A death, a leave, a removal or a new incarnation changes it.
        b.setState(x, to: .dead)
        #expect(a.digest != b.digest)
        a.remove(x)
        #expect(a.digest == b.digest)
        var c = claims[3]
        c.incarnation += 1
        a.observe(c, now: Instant(nanos: 3))
        #expect(a.digest != b.digest)
        #expect((0..<NodeMap.digestBuckets).filter { a.bucketSum($0) != b.bucketSum($0) } == [NodeMap.digestBucket(c.address)])
    }
}
