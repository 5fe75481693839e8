import NodeMap
import Testing

/// `refreshRepeat` is `observe`'s fast path alone: for a claim that repeats what the map holds of a
/// member it records the time heard and returns true; for any other claim it changes nothing and
/// returns false, leaving the work to `observe`.
struct RefreshRepeatTests {
    static let a = IPAddress(v4: 0x0A00_0102)

    static func map() -> NodeMap {
        var m = NodeMap()
        _ = m.observe(NodeClaim(address: a, incarnation: 3, hops: 1, heartbeatPort: 7778), now: 1_000_000)
        return m
    }

    @Test func aRepeatIsHeardAndNothingElse() {
        var m = Self.map()
        let before = m.generation
        let first = m.refreshRepeat(NodeClaim(address: Self.a, incarnation: 3, hops: 1, heartbeatPort: 7778), now: 9_000_000)
        #expect(first)
        #expect(m[Self.a]?.lastHeard == Instant(nanos: 9_000_000))
        #expect(m.generation == before)
        // An earlier time heard does not move it back.
        let again = m.refreshRepeat(NodeClaim(address: Self.a, incarnation: 3, hops: 1, heartbeatPort: 7778), now: 2_000_000)
        #expect(again)
        #expect(m[Self.a]?.lastHeard == Instant(nanos: 9_000_000))
    }

    @Test func anythingElseIsLeftToObserve() {
        let claims = [
            NodeClaim(address: IPAddress(v4: 0x0A00_0103), incarnation: 3, hops: 1, heartbeatPort: 7778),  // unknown
            NodeClaim(address: Self.a, incarnation: 4, hops: 1, heartbeatPort: 7778),
            NodeClaim(address: Self.a, incarnation: 2, hops: 1, heartbeatPort: 7778),
            NodeClaim(address: Self.a, incarnation: 3, hops: 2, heartbeatPort: 7778),
            NodeClaim(address: Self.a, incarnation: 3, hops: 1, heartbeatPort: 7000),
            NodeClaim(address: Self.a, preferredID: NodeID(rawValue: 9), explicitID: true, incarnation: 3, hops: 1, heartbeatPort: 7778),
            NodeClaim(
                address: Self.a, aliases: [Alias(IPAddress(v4: 0xC0A8_0102), source: .interface)], incarnation: 3, hops: 1,
                heartbeatPort: 7778),
            NodeClaim(address: Self.a, incarnation: 3, hops: 1, heartbeatPort: 7778, capabilities: [.rdma(gidHi: 1, gidLo: 2, qpn: 3, qkey: 4)]),
        ]
        for c in claims {
            var m = Self.map()
            let before = m.nodes
            let taken = m.refreshRepeat(c, now: 9_000_000)
            #expect(!taken, "\(c)")
            #expect(m.nodes == before, "\(c)")
        }
        // A member held left (or dead) at the same incarnation is not refreshed either.
        var left = Self.map()
        _ = left.setState(Self.a, to: .left, incarnation: 3)
        let held = left.nodes
        let taken = left.refreshRepeat(NodeClaim(address: Self.a, incarnation: 3, hops: 1, heartbeatPort: 7778), now: 9_000_000)
        #expect(!taken)
        #expect(left.nodes == held)
    }
}
