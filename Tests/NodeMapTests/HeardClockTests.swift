@testable import NodeMap
import Testing

/// The map keeps each node's time heard in 32 bits of whole milliseconds after a base
/// (`HeardClock`): rounded up, rebased when the clock runs 2^31 ms past the base.
struct HeardClockTests {
    let ms: UInt64 = 1_000_000

    @Test func roundsUpToWholeMilliseconds() {
        var m = NodeMap()
        let a = IPAddress(v4: 0x0A00_0001)
        _ = m.observe(NodeClaim(address: a, incarnation: 1), now: Instant(nanos: 5 * ms + 1))
        #expect(m[a]?.lastHeard == Instant(nanos: 6 * ms))
        #expect(m.brief(a)?.lastHeard == Instant(nanos: 6 * ms))
        // Heard again within the same millisecond: the same time; a later one moves it.
        m.touch(a, now: Instant(nanos: 5 * ms + 900_000))
        #expect(m[a]?.lastHeard == Instant(nanos: 6 * ms))
        m.touch(a, now: Instant(nanos: 6 * ms + 1))
        #expect(m[a]?.lastHeard == Instant(nanos: 7 * ms))
        // Never backwards.
        m.touch(a, now: Instant(nanos: 2 * ms))
        #expect(m[a]?.lastHeard == Instant(nanos: 7 * ms))
        // Exact milliseconds stay exact.
        m.touch(a, now: Instant(nanos: 40 * ms))
        #expect(m[a]?.lastHeard == Instant(nanos: 40 * ms))
    }

    @Test func aDatagramAfterAnInstantNeverReadsAsBeforeIt() {
        // The detector clears a suspicion when the node was heard after the suspicion began.
        var m = NodeMap()
        let a = IPAddress(v4: 0x0A00_0002)
        _ = m.observe(NodeClaim(address: a, incarnation: 1), now: 0)
        for k: UInt64 in [1, 499_999, 500_000, 999_999, 1_000_000, 1_000_001] {
            let since = Instant(nanos: 12 * ms + k)
            m.touch(a, now: since + .nanoseconds(1))
            #expect(m[a]!.lastHeard > since, "since \(since)")
        }
    }

    @Test func aMonthsLongUptimeRebasesAndKeepsRecentTimes() {
        // A daemon's CLOCK_MONOTONIC after 60 days: far past 2^32 ms from zero.
        var m = NodeMap()
        let old = IPAddress(v4: 0x0A00_0003)
        let recent = IPAddress(v4: 0x0A00_0004)
        let day: UInt64 = 86_400_000 * ms
        _ = m.observe(NodeClaim(address: old, incarnation: 1), now: Instant(nanos: 1 * day))
        _ = m.observe(NodeClaim(address: recent, incarnation: 1), now: Instant(nanos: 20 * day))
        for d: UInt64 in [30, 45, 60, 75, 120] {
            let now = Instant(nanos: d * day + 123 * ms)
            m.touch(recent, now: now)
            #expect(m[recent]?.lastHeard == now, "day \(d)")
            // Heard before the base: reads as heard at the base, which lies at least 12 days back.
            #expect(now - m[old]!.lastHeard >= .seconds(12 * 86_400), "day \(d)")
        }
        // The sync age of a node heard a second ago is a second, after all those rebases.
        let now = Instant(nanos: 120 * day + 1123 * ms)
        #expect((now - m[recent]!.lastHeard) == .seconds(1))
    }

    @Test func clockArithmetic() {
        var c = HeardClock()
        #expect(c.ticks(0) == 0)
        #expect(c.ticks(1) == 1)
        #expect(c.ticks(ms) == 1)
        #expect(c.ticks(ms + 1) == 2)
        #expect(c.ticks(HeardClock.limit * ms) == nil)
        #expect(c.ticksIfNoRebase(HeardClock.limit * ms) == .max)
        let t = 3 * HeardClock.limit * ms + 7
        let shift = c.rebase(to: t)
        #expect(c.base % ms == 0)
        #expect(shift * ms == c.base)
        #expect(c.ticks(t) == UInt32(HeardClock.lag + 1))
        #expect(c.nanos(c.ticks(t)!) >= t && c.nanos(c.ticks(t)!) < t + ms)
        #expect(c.ticks(c.base - 1) == 0)
    }
}
