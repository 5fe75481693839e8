import NodeMap
import Testing

@testable import Detector

/// `mapChanged(_:changes:now:)` skips bringing the ring up to date when the changes cannot move it.
/// Against a core that always brings it up to date, fed the same random map changes (arrivals,
/// deaths, leaves, removals, restarts, suspicions the detector raises on its own), it must give the
/// same outputs and the same ring after every change, and it must actually skip (or it is no faster).
struct RingSkipTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6])
    func skippingGivesTheSameRingAsRefreshing(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let me = addr(50)
        var map = NodeMap()
        map.observe(NodeClaim(address: me, incarnation: 1, heartbeatPort: 7000), now: .zero)
        var full = DetectorCore(settings: try defaults(), selfAddress: me, now: .zero)
        var skip = full
        // The way ClusterNode calls it (the skip test from the map's counters, then the refresh).
        var split = full
        _ = full.mapChanged(map, now: .zero)
        _ = skip.mapChanged(map, changes: [], now: .zero)
        _ = split.mapChanged(map, now: .zero)
        var t = Instant.zero
        for step in 0..<3000 {
            t = t + 10 * ms
            // IDs 1...120 around us (ID 50): most changes are far from our neighbours, some next to us.
            let who = addr(Int.random(in: 1...120, using: &rng))
            guard who != me else { continue }
            var changes: [NodeMapChange]
            switch Int.random(in: 0..<10, using: &rng) {
            case 0...4:
                changes = map.observe(
                    NodeClaim(address: who, incarnation: UInt64.random(in: 1...4, using: &rng), heartbeatPort: 7000), now: t)
            case 5: changes = map.setState(who, to: .dead)
            case 6: changes = map.setState(who, to: .left)
            case 7: changes = map.setState(who, to: .suspect)
            case 8: changes = map.remove(who)
            default:
                // The detector's own clock: heartbeats, deadlines, suspicions of the predecessor; the
                // changes it makes come back to it as the shell hands them on.
                var m2 = map
                var m3 = map
                let a = full.tick(now: t, map: &map)
                let b = skip.tick(now: t, map: &m2)
                let c = split.tick(now: t, map: &m3)
                #expect(a == b && a == c, "tick, step \(step)")
                changes = a.flatMap { o -> [NodeMapChange] in
                    if case .changes(let c) = o { return c }
                    return []
                }
            }
            guard !changes.isEmpty else { continue }
            let a = full.mapChanged(map, now: t)
            let b = skip.mapChanged(map, changes: changes, now: t)
            #expect(a == b, "step \(step): \(changes)")
            let c =
                split.skipsRing(changes, changeTotal: map.changeTotal, generation: map.generation)
                ? [] : split.mapChanged(map, now: t)
            #expect(a == c, "split, step \(step): \(changes)")
            #expect(split.observed == skip.observed && split.observer == skip.observer && split.ringSkips == skip.ringSkips)
            #expect(full.observed == skip.observed && full.observer == skip.observer, "step \(step)")
            #expect(full.isSuspecting == skip.isSuspecting)
            #expect(full.observedNode?.id == skip.observedNode?.id && full.observedNode?.deadline == skip.observedNode?.deadline)
        }
        #expect(skip.ringSkips > 300, "only \(skip.ringSkips) changes skipped")
        #expect(full.ringSkips == 0)
    }
}
