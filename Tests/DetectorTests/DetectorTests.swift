import Glibc
import NodeMap
import Testing
import Wire

@testable import Detector

/// Slack on top of the protocol's own bounds: message latency (1 ms a hop) and tick granularity.
let bound: TimeSpan = 20 * ms

/// The mechanism tests' own timing (η 100 ms, δ 500 ms, window 400 ms): round numbers that the
/// expected times below are written in. The daemon's preset is checked in `defaultsAreValid`.
func defaults(confirmations: Int = 3) throws -> DetectorSettings {
    try DetectorSettings(
        period: 100 * ms, timeout: 500 * ms, confirmations: confirmations, confirmWindow: 400 * ms)
}

/// A net of `n` nodes (IDs 1...n) running past the startup grace so that every ring link is live.
func warmNet(_ n: Int, settings: DetectorSettings, until: Instant = at(3 * sec)) -> TestNet {
    var net = TestNet(nodes: Array(1...n), settings: settings)
    net.run(until: until)
    return net
}

@Suite struct SettingsTests {
    @Test func defaultsAreValid() throws {
        // The daemon's preset: one source for discd, discd simulate and the simulator tests.
        let s = try DetectorSettings()
        #expect(s == DetectorSettings.default)
        #expect(s == DetectorSettings.lan)
        #expect(s.period == 150 * ms)
        #expect(s.timeout == 450 * ms)
        #expect(s.confirmations == 3)
        #expect(s.confirmWindow == 600 * ms)
        #expect(s.startupSlack == 1 * sec)
        #expect(s.driftTolerance == 75 * ms)
        #expect(s.watchLifetime == 6000 * ms)  // max(3δ, 6 s)
        #expect(DetectorSettings.presets.map(\.name) == ["lan", "wan"])
        for p in DetectorSettings.presets { try p.settings.validate() }
        // δ + 1 s + ceil(log2 8)·η
        #expect(s.startupGrace(memberCount: 8) == 450 * ms + 1 * sec + 3 * 150 * ms)
    }

    @Test func timeoutShorterThanThreePeriodsIsRejected() {
        #expect(throws: DetectorSettings.Error.timeoutTooShort(timeout: 250 * ms, period: 100 * ms)) {
            try DetectorSettings(period: 100 * ms, timeout: 250 * ms)
        }
        do {
            _ = try DetectorSettings(period: 100 * ms, timeout: 250 * ms)
            Issue.record("δ < 3η accepted")
        } catch {
            let text = "\(error)"
            #expect(text.contains("250ms"))
            #expect(text.contains("3 × period"))
            #expect(text.contains("two lost heartbeats"))
        }
        // Exactly 3η is fine.
        #expect((try? DetectorSettings(period: 100 * ms, timeout: 300 * ms)) != nil)
    }

    @Test func otherInvariantsAreChecked() {
        #expect(throws: DetectorSettings.Error.periodOutOfRange(period: 0)) { try DetectorSettings(period: 0) }
        #expect(throws: DetectorSettings.Error.periodOutOfRange(period: 70 * sec)) {
            try DetectorSettings(period: 70 * sec, timeout: 300 * sec)
        }
        #expect(throws: DetectorSettings.Error.confirmationsOutOfRange(-1)) {
            try DetectorSettings(confirmations: -1)
        }
        #expect(throws: DetectorSettings.Error.confirmWindowTooShort(confirmWindow: 50 * ms, period: 150 * ms)) {
            try DetectorSettings(confirmWindow: 50 * ms)
        }
        #expect(throws: DetectorSettings.Error.durationTooLong(name: "startup slack", value: 7200 * sec)) {
            try DetectorSettings(startupSlack: 7200 * sec)
        }
        #expect((try? DetectorSettings(confirmations: 0)) != nil)
        var s = try! DetectorSettings()
        s.timeout = 100 * ms
        #expect(throws: DetectorSettings.Error.self) { try s.validate() }
    }
}

@Suite struct DetectionTests {
    @Test func crashedNodeIsDeclaredDeadByEverySurvivor() throws {
        let s = try defaults()
        var net = warmNet(8, settings: s)
        #expect(net.marked(.suspect).isEmpty, "false suspicion during warm-up")
        let crash = net.now
        net.crash(5)
        net.run(until: crash + 3 * sec)

        // The observer (6) heard 5 at most η before the crash: suspect at ≥ crash − η + δ,
        // dead one confirm window later, and everyone else within the notice's latency.
        let suspectAt = try #require(net.firstTime(5, became: .suspect, at: 6))
        #expect(suspectAt >= crash + s.timeout - s.period)
        #expect(suspectAt <= crash + s.timeout + bound)
        for i in [1, 2, 3, 4, 6, 7, 8] {
            let t = try #require(net.firstTime(5, became: .dead, at: i), "node \(i) never marked 5 dead")
            #expect(t <= crash + s.timeout + s.confirmWindow + bound, "node \(i) late by \((t - crash) / ms) ms")
            #expect(t >= crash + s.timeout - s.period + s.confirmWindow, "declared before the confirm window")
            #expect(net.state(of: 5, at: i) == .dead)
        }
        // Only 6 suspected, only 6 declared; nobody else was ever marked.
        #expect(net.marked(.suspect) == [addr(5)])
        #expect(net.marked(.dead) == [addr(5)])
        #expect(net.core(6).stats.deathsDeclared == 1)
        #expect(net.running.reduce(0) { $0 + net.cores[$1]!.stats.deathsDeclared } == 1)
        #expect(net.running.filter { $0 != addr(6) }.allSatisfy { net.cores[$0]!.stats.deathsLearned == 1 })
        let ordered = net.changesAreOrdered()
        #expect(ordered)
        #expect(net.wrongPorts == 0)
        // ULFM-style log line with the numbers.
        #expect(net.logs[addr(6)]!.contains {
            if case .declaredDead(let a, _, _, _, _, let rounds, _) = $0 { a == addr(5) && rounds >= 1 } else { false }
        })
    }

    @Test func ringIsRepairedAfterEachConsecutiveDeath() throws {
        let s = try defaults()
        var net = warmNet(8, settings: s)
        #expect(net.core(6).observed == addr(5))
        #expect(net.core(4).observer == addr(5))

        // Kill 5, then (after it is detected) the node the repaired observer now watches, then the next.
        var observer = 6
        for victim in [5, 4, 3] {
            let crash = net.now
            net.crash(victim)
            net.run(until: crash + s.timeout + s.confirmWindow + bound)
            for i in net.running {
                #expect(net.maps[i]![addr(victim)]?.state == .dead, "\(i) does not know \(victim) died")
            }
            // The observer re-picked its predecessor and that one now heartbeats it.
            #expect(net.core(observer).observed == addr(victim - 1))
            #expect(net.core(victim - 1).observer == addr(observer))
            net.run(until: net.now + 1 * sec)
            #expect(!net.core(observer).isSuspecting)
        }
        #expect(net.marked(.dead) == [addr(5), addr(4), addr(3)])
        #expect(net.marked(.suspect) == [addr(5), addr(4), addr(3)])
        #expect(net.core(observer).stats.deathsDeclared == 3)
        let ordered = net.changesAreOrdered()
        #expect(ordered)
    }

    @Test(arguments: [2, 3])
    func adjacentSimultaneousDeathsAreAllDetected(count: Int) throws {
        let s = try defaults()
        var net = warmNet(8, settings: s)
        let victims = Array((6 - count)..<6)  // [4, 5] or [3, 4, 5]
        let crash = net.now
        for v in victims { net.crash(v) }
        // 6 detects 5, repairs to 4 and probes the run behind 5 (4, 3, ...) together for one more
        // window: all of them dead within δ + 2 windows, not count × (δ + window).
        net.run(until: crash + s.timeout + 2 * s.confirmWindow + bound)
        for i in (1...8).filter({ !victims.contains($0) }) {
            for v in victims {
                #expect(net.state(of: v, at: i) == .dead, "node \(i) does not know \(v) died")
            }
        }
        #expect(net.marked(.dead) == Set(victims.map(addr)))
        #expect(net.core(6).observed == addr(victims.first! - 1))
        net.run(until: net.now + 2 * sec)
        #expect(net.marked(.dead) == Set(victims.map(addr)))
        // Only 5 was suspected; the run's verdict declared the others.
        #expect(net.marked(.suspect) == [addr(5)])
        #expect(net.core(6).stats.runsProbed == 1)
        #expect(net.core(6).stats.runDeaths == count - 1)
        let ordered = net.changesAreOrdered()
        #expect(ordered)
    }

    @Test func newMemberIsNotSuspectedBeforeStartupSlack() throws {
        let s = try defaults()
        var net = warmNet(4, settings: s)
        // Node 5 appears in every map (an announce) but its daemon never runs.
        let joined = net.now
        for b in net.order {
            net.announce(claim(5), to: b)
            let out = net.cores[b]!.mapChanged(net.maps[b]!, now: net.now)
            net.handle(out, from: b)
        }
        #expect(net.core(1).observed == addr(5))
        let grace = s.startupGrace(memberCount: 5)  // 0.5 s + 1 s + 3 × 0.1 s
        #expect(grace == 1800 * ms)
        #expect(net.core(1).observedDeadline == joined + grace)
        net.run(until: joined + grace - 1 * ms)
        #expect(net.marked(.suspect).isEmpty, "new member suspected before its startup grace")
        net.run(until: joined + grace + s.confirmWindow + bound)
        let t = try #require(net.firstTime(5, became: .suspect, at: 1))
        #expect(t >= joined + grace)
        #expect(net.state(of: 5, at: 2) == .dead)
        #expect(net.marked(.dead) == [addr(5)])
        // Meanwhile 4 was handed over to 1 without a gap and never suspected.
        #expect(net.core(1).observed == addr(4))
        #expect(net.state(of: 4, at: 1) == .alive)
    }
}

@Suite struct RefutationTests {
    /// 4's heartbeats and answers never reach its observer 5, but 4 answers probes relayed by helpers.
    func oneWayLinkNet(confirmations: Int) throws -> TestNet {
        var net = TestNet(nodes: Array(1...8), settings: try defaults(confirmations: confirmations))
        net.announceOnRefute = false  // only the helper path can save 4
        net.drop = { from, to, _ in from == addr(4) && to == addr(5) }
        net.run(until: at(6 * sec))
        return net
    }

    @Test func nodeAnsweringThroughHelpersIsNotDeclaredDead() throws {
        let net = try oneWayLinkNet(confirmations: 3)
        #expect(net.marked(.dead).isEmpty)
        for i in 1...8 { #expect(net.state(of: 4, at: i) != .dead) }
        let o = net.core(5).stats
        #expect(o.suspicions >= 2)
        #expect(o.refutedSuspicions == o.suspicions || o.refutedSuspicions == o.suspicions - 1)
        #expect(o.probeRequestsSent >= 3)
        let relayed = (1...8).map { net.core($0).stats.probeAcksRelayed }.reduce(0, +)
        #expect(relayed >= o.refutedSuspicions)
        #expect(net.core(4).stats.probeAcksSent >= 2)
        #expect(net.marked(.suspect) == [addr(4)])
        let ordered = net.changesAreOrdered()
        #expect(ordered)
    }

    @Test func withoutHelpersTheSameNodeIsDeclaredDead() throws {
        // Control for the test above: with k = 0 the one-way link kills 4.
        let net = try oneWayLinkNet(confirmations: 0)
        #expect(net.state(of: 4, at: 5) == .dead)
        #expect(net.core(5).stats.probeRequestsSent == 0)
    }

    @Test func suspectedNodeAnswersOrRefutes() throws {
        var map = makeMap([1, 2, 3])
        var core = DetectorCore(settings: try defaults(), selfAddress: addr(2), now: 0)
        _ = core.mapChanged(map, now: 0)
        // A suspicion at our own incarnation lives in the accuser's map only: a heartbeat to it
        // answers it, and the incarnation (which every map holds) stays.
        var out = core.receive(
            .suspect(target: addr(2), targetIncarnation: 0), from: addr(3), originIncarnation: 0, now: at(5 * ms),
            map: &map)
        #expect(!out.contains(where: isRefute))
        #expect(out.contains { if case .send(.heartbeat, addr(3), port(3)) = $0 { true } else { false } })
        #expect(core.stats.suspicionsAnswered == 1)
        #expect(core.stats.refutations == 0)
        // Its probe within a period is in flight from before the answer; one a period later means
        // the answers do not reach it: refuted once, so the announce tries the multicast path.
        let probe = Body.probe(requester: addr(3), nonce: 5)
        out = core.receive(probe, from: addr(3), originIncarnation: 0, now: at(50 * ms), map: &map)
        #expect(!out.contains(where: isRefute))
        out = core.receive(probe, from: addr(1), originIncarnation: 0, now: at(105 * ms), map: &map)
        #expect(out.contains(where: isRefute))
        out = core.receive(probe, from: addr(3), originIncarnation: 0, now: at(155 * ms), map: &map)
        #expect(!out.contains(where: isRefute))
        #expect(core.stats.refutations == 1)
        // One above our incarnation (the accuser knows a later life of ours): refuted past it.
        out = core.receive(
            .suspect(target: addr(2), targetIncarnation: 3), from: addr(3), originIncarnation: 0, now: at(200 * ms),
            map: &map)
        #expect(out.contains(where: isRefute))
        #expect(core.stats.refutations == 2)
        // Suspicions of others are none of our business.
        out = core.receive(
            .suspect(target: addr(1), targetIncarnation: 0), from: addr(3), originIncarnation: 0, now: at(210 * ms),
            map: &map)
        #expect(!out.contains(where: isRefute))
        // After the refutation (incarnation 1), a suspicion of incarnation 0 is stale.
        map.observe(claim(2, incarnation: 1), now: at(230 * ms))
        out = core.receive(
            .suspect(target: addr(2), targetIncarnation: 0), from: addr(3), originIncarnation: 0, now: at(240 * ms),
            map: &map)
        #expect(!out.contains(where: isRefute))
        // A death notice about ourselves is refuted and never forwarded.
        out = core.receive(
            .dead(target: addr(2), targetIncarnation: 1, targetID: 2), from: addr(3), originIncarnation: 0,
            now: at(250 * ms), map: &map)
        #expect(out.contains(where: isRefute))
        #expect(core.stats.refutations == 3)
        #expect(!out.contains { if case .send(.dead, _, _) = $0 { true } else { false } })
        #expect(map[addr(2)]?.state == .alive)
        // A probe of ourselves is answered with our incarnation.
        out = core.receive(.probe(requester: addr(1), nonce: 77), from: addr(3), originIncarnation: 0, now: at(260 * ms), map: &map)
        #expect(out.contains(.send(.probeAck(target: addr(2), targetIncarnation: 1, nonce: 77), to: addr(3), port: port(3))))
    }

    @Test func refutationByAnnounceClearsSuspicion() throws {
        // 4 → 5 is cut and no helpers: 5 suspects 4; 4's heartbeat answer and probe answers are lost,
        // so when 5's probes go on a period later 4 refutes with incarnation 1, and the announce
        // brings it back alive in 5's map before the confirm window runs out.
        var net = TestNet(nodes: Array(1...8), settings: try defaults(confirmations: 0))
        net.drop = { from, to, _ in from == addr(4) && to == addr(5) }
        net.run(until: at(3 * sec))
        #expect(net.refutes[addr(4), default: 0] >= 1)
        #expect(net.marked(.dead).isEmpty)
        #expect(net.core(5).stats.suspicions >= 1)
        #expect(net.core(5).stats.refutedSuspicions >= 1)
        for i in 1...8 { #expect(net.map(i)[addr(4)]!.incarnation >= 1) }
        #expect(net.state(of: 4, at: 5) != .dead)
    }

    @Test func deadNodeReturnsWithHigherIncarnation() throws {
        let s = try defaults()
        var net = warmNet(6, settings: s)
        net.crash(4)
        net.run(until: net.now + 2 * sec)
        for i in [1, 2, 3, 5, 6] { #expect(net.state(of: 4, at: i) == .dead) }
        #expect(net.core(5).observed == addr(3))

        // 4 restarts with incarnation 1 and announces itself.
        net.start(4, knowing: Array(1...6), incarnation: 1)
        for b in net.order where b != addr(4) { net.announce(claim(4, incarnation: 1), to: b) }
        let back = net.now
        net.run(until: back + 4 * sec)
        for i in 1...6 {
            #expect(net.state(of: 4, at: i) == .alive, "4 not alive again at \(i)")
            #expect(net.map(i)[addr(4)]?.incarnation == 1)
        }
        #expect(net.core(5).observed == addr(4))
        #expect(net.core(4).observed == addr(3))
        #expect(net.core(3).observer == addr(4))
        // No new death after the return.
        #expect(!net.events.contains { e in
            guard e.at > back, case .stateChanged(_, _, _, let to, _) = e.change else { return false }
            return to == .dead || to == .suspect
        })
        let ordered = net.changesAreOrdered()
        #expect(ordered)
    }
}

@Suite struct DriftTests {
    @Test func pausedObserverDoesNotSuspectOnResume() throws {
        let s = try defaults()
        var net = warmNet(4, settings: s)
        // 3 observes 2. Its process stops for 2 s: no ticks, datagrams wait in the socket buffer.
        #expect(net.core(3).observed == addr(2))
        let start = net.now
        net.pause(3)
        net.run(until: start + 2 * sec)
        net.resume(3)  // the overdue tick runs before the buffered heartbeats are read
        net.run(until: net.now + 3 * sec)

        #expect(net.firstTime(2, became: .suspect, at: 3) == nil, "3 suspected 2 after its own pause")
        #expect(net.state(of: 2, at: 3) == .alive)
        #expect(net.core(3).stats.lateTicks == 1)
        #expect(net.core(3).stats.lateHeartbeats == 1)
        let logs = net.logs[addr(3)] ?? []
        #expect(logs.contains { if case .lateTick(let pause, _, _, _, _) = $0 { pause / (100 * ms) == 19 } else { false } })
        #expect(logs.contains { if case .lateHeartbeat(let late, _, _) = $0 { late / (100 * ms) == 19 } else { false } })
        // 3 itself was paused long enough to be declared dead by 4; it refuted and is back.
        for i in 1...4 { #expect(net.state(of: 3, at: i) == .alive) }
        #expect(net.refutes[addr(3), default: 0] >= 1)
    }

    @Test func lateTickExtendsDeadlineByThePause() throws {
        var map = makeMap([1, 2])
        let s = try defaults()
        var core = DetectorCore(settings: s, selfAddress: addr(2), now: 0)
        _ = core.mapChanged(map, now: 0)
        for k in 0...(3 * sec / s.period) {
            let t = at(s.period * k)
            let hb = Body.heartbeat(sequence: 1, periodMillis: 100)
            _ = core.receive(hb, from: addr(1), originIncarnation: 0, now: t, map: &map)
            _ = core.tick(now: t, map: &map)
        }
        #expect(core.stats.lateTicks == 0)
        #expect(core.observedDeadline == at(3 * sec + s.timeout))
        // Next tick comes 1 s late instead of after η: not suspected, deadline moved by the pause.
        let out = core.tick(now: at(4 * sec + 100 * ms), map: &map)
        #expect(!core.isSuspecting)
        #expect(map[addr(1)]?.state == .alive)
        #expect(core.observedDeadline == at(3 * sec + s.timeout + 1 * sec))
        #expect(core.stats.lateTicks == 1)
        #expect(out.contains {
            if case .event(.lateTick(let pause, _, _, let o, let grace)) = $0 { pause == 1 * sec && o == addr(1) && grace != nil } else { false }
        })
        // On time from now on, and still silent: suspected at the extended deadline.
        _ = core.tick(now: at(4 * sec + 200 * ms), map: &map)
        _ = core.tick(now: at(4 * sec + 300 * ms), map: &map)
        _ = core.tick(now: at(4 * sec + 400 * ms), map: &map)
        _ = core.tick(now: at(4 * sec + 500 * ms), map: &map)
        #expect(core.isSuspecting)
        #expect(map[addr(1)]?.state == .suspect)
    }
}

@Suite struct DisseminationTests {
    @Test func deadNoticesAreDeduplicatedAndForwardedOnce() throws {
        var map = makeMap(Array(1...8))
        var core = DetectorCore(settings: try defaults(), selfAddress: addr(1), now: 0)
        _ = core.mapChanged(map, now: 0)
        let notice = Body.dead(target: addr(5), targetIncarnation: 0, targetID: 5)
        var out = core.receive(notice, from: addr(2), originIncarnation: 0, now: at(1 * sec), map: &map)
        #expect(map[addr(5)]?.state == .dead)
        #expect(out.contains { if case .changes = $0 { true } else { false } })
        let forwards = out.compactMap { o -> IPAddress? in
            if case .send(notice, let to, _) = o { to } else { nil }
        }
        // 7 members left; rank 0's neighbours are ranks ±1, ±2, ±4 → 6 nodes; not back to the sender.
        #expect(Set(forwards) == Set([3, 4, 6, 7, 8].map(addr)))
        #expect(forwards.count == 5)
        #expect(core.stats.deathsLearned == 1)

        for from in [2, 3, 7] {
            out = core.receive(notice, from: addr(from), originIncarnation: 0, now: at(1 * sec + 5 * ms), map: &map)
            #expect(out.isEmpty)
        }
        #expect(core.stats.duplicateDeadNotices == 3)
        #expect(core.stats.deathsLearned == 1)

        // 5 comes back with incarnation 1: the old notice is stale and cannot kill it again.
        map.observe(claim(5, incarnation: 1), now: at(2 * sec))
        #expect(map[addr(5)]?.state == .alive)
        out = core.receive(notice, from: addr(6), originIncarnation: 0, now: at(2 * sec), map: &map)
        #expect(map[addr(5)]?.state == .alive)
        out = core.receive(
            .dead(target: addr(5), targetIncarnation: 0, targetID: 5), from: addr(8), originIncarnation: 0,
            now: at(2 * sec), map: &map)
        #expect(map[addr(5)]?.state == .alive)
        // A notice of the new incarnation is news.
        out = core.receive(
            .dead(target: addr(5), targetIncarnation: 1, targetID: 5), from: addr(8), originIncarnation: 0,
            now: at(3 * sec), map: &map)
        #expect(map[addr(5)]?.state == .dead)
    }

    @Test func manyDeathsAtOnceGoTogetherALoneOneAtOnce() throws {
        var map = makeMap(Array(1...300))
        var core = DetectorCore(settings: try defaults(), selfAddress: addr(1), now: 0)
        _ = core.mapChanged(map, now: 0)
        let t0 = at(1 * sec)
        func deaths(_ out: [DetectorOutput]) -> [IPAddress: [IPAddress]] {
            var d: [IPAddress: [IPAddress]] = [:]
            for o in out {
                switch o {
                case .send(.dead(let t, _, _), let to, _): d[to, default: []].append(t)
                case .send(.deaths(let ns), let to, _): d[to, default: []] += ns.map(\.target)
                default: break
                }
            }
            return d
        }
        func datagrams(_ out: [DetectorOutput]) -> Int {
            out.count { if case .send(.dead, _, _) = $0 { true } else if case .send(.deaths, _, _) = $0 { true } else { false } }
        }
        // 100 nodes die at once (a rack, a partition): the first notice goes on at once as `dead`,
        // the next 80 in two full `deaths` datagrams per neighbour, the last 19 when the window ends.
        var out: [DetectorOutput] = []
        for j in 101...200 {
            out += core.receive(
                .dead(target: addr(j), targetIncarnation: 0, targetID: UInt16(j)), from: addr(2), originIncarnation: 0,
                now: t0, map: &map)
        }
        #expect((101...200).allSatisfy { map[addr($0)]?.state == .dead })
        #expect(core.stats.deathsLearned == 100)
        #expect(out.contains { if case .send(.dead(addr(101), 0, 101), addr(3), _) = $0 { true } else { false } })
        #expect(core.deathBatch.count == 19)
        #expect(core.nextDeadline <= t0 + DetectorCore.deathBatchWindow)
        let rest = core.tick(now: t0 + DetectorCore.deathBatchWindow, map: &map)
        let all = deaths(out + rest)
        let neighbours = Set(all.keys)
        #expect(neighbours.count >= 2 * 7 && !neighbours.contains(addr(1)))
        // The ring neighbours (±1, ±2 by rank) hear of all 100 deaths, the sender 2 of all but the
        // first it sent; nobody hears one twice.
        #expect(Set(all[addr(3)] ?? []) == Set((101...200).map(addr)))
        #expect(Set(all[addr(300)] ?? []) == Set((101...200).map(addr)))
        #expect(Set(all[addr(2)] ?? []) == Set((102...200).map(addr)))
        for ts in all.values { #expect(ts.count == Set(ts).count && ts.allSatisfy { (101...200).map(addr).contains($0) }) }
        // ...in 4 datagrams at most (1 lone + 2 full + 1 rest), not 100.
        #expect(datagrams(out + rest) <= 4 * neighbours.count)
        #expect(core.deathBatch.isEmpty && core.deathBatchDue == nil)

        // The same batch again is no news: nothing forwarded, every one a duplicate.
        let again = core.receive(
            .deaths((101...140).map { DeathNotice(target: addr($0), targetIncarnation: 0, targetID: UInt16($0)) }),
            from: addr(3), originIncarnation: 0, now: t0 + 20 * ms, map: &map)
        #expect(datagrams(again) == 0)
        #expect(core.stats.duplicateDeadNotices == 40)

        // A lone death later goes at once, as `dead`, to every neighbour but its sender.
        let lone = core.receive(
            .dead(target: addr(250), targetIncarnation: 0, targetID: 250), from: addr(3), originIncarnation: 0,
            now: t0 + 1 * sec, map: &map)
        let l = deaths(lone)
        #expect(!l.isEmpty && l.values.allSatisfy { $0 == [addr(250)] } && l[addr(3)] == nil)
        #expect(lone.allSatisfy { if case .send(.deaths, _, _) = $0 { false } else { true } })
    }

    @Test func binomialGraphNeighbourSets() throws {
        for n in 1...64 {
            let limit = 2 * ceilLog2(n)
            for r in 0..<n {
                let nb = DetectorCore.bmgNeighbourRanks(of: r, count: n)
                #expect(nb.count <= limit)
                #expect(!nb.contains(r))
                #expect(Set(nb).count == nb.count)
                for x in nb { #expect(DetectorCore.bmgNeighbourRanks(of: x, count: n).contains(r)) }
            }
        }
        // N = 16 over real maps: ±1, ±2, ±4, ±8 → 7 distinct neighbours each, ≤ 2·ceil(log2 16) = 8.
        var map = makeMap(Array(1...16))
        var graph: [IPAddress: Set<IPAddress>] = [:]
        for i in 1...16 {
            let core = DetectorCore(settings: try defaults(), selfAddress: addr(i), now: 0)
            let nb = core.bmgNeighbours(in: map)
            #expect(nb.count == 7)
            #expect(nb.count <= 2 * ceilLog2(16))
            graph[addr(i)] = Set(nb)
        }
        #expect(graph[addr(1)] == Set([2, 3, 5, 9, 16, 15, 13].map(addr)))
        // Connected with diameter ≤ ceil(log2 N): everyone reached in 4 rounds from node 1.
        var reached: Set<IPAddress> = [addr(1)]
        for _ in 0..<4 { reached.formUnion(reached.flatMap { graph[$0]! }) }
        #expect(reached.count == 16)
        // Dead peers are skipped.
        map.setState(addr(2), to: .dead)
        let nb = DetectorCore(settings: try defaults(), selfAddress: addr(1), now: 0).bmgNeighbours(in: map)
        #expect(!nb.contains(addr(2)))
        #expect(nb.count <= 2 * ceilLog2(15))
        #expect(nb.contains(addr(3)))
    }
}

@Suite struct HeartbeatTests {
    @Test func heartbeatsGoToSuccessorAndWatchers() throws {
        let s = try defaults()
        var map = makeMap([1, 2, 3, 4])
        var core = DetectorCore(settings: s, selfAddress: addr(2), now: 0)
        let start = core.mapChanged(map, now: 0)
        #expect(core.observed == addr(1))
        #expect(core.observer == addr(3))
        // The first watch waits a period: the new predecessor may heartbeat us anyway.
        #expect(!start.contains(.send(.watch, to: addr(1), port: port(1))))

        func heartbeatTargets(_ out: [DetectorOutput]) -> Set<IPAddress> {
            Set(out.compactMap { if case .send(.heartbeat, let to, _) = $0 { to } else { nil } })
        }
        #expect(heartbeatTargets(core.tick(now: 0, map: &map)) == [addr(3)])
        #expect(core.nextDeadline == at(s.period))
        let second = core.tick(now: at(s.period), map: &map)
        #expect(heartbeatTargets(second) == [addr(3)])
        // No heartbeat from 1 within the period: it is asked to send them.
        #expect(second.contains(.send(.watch, to: addr(1), port: port(1))))

        // 4 thinks it observes 2 (views differ briefly): it gets a heartbeat at once and every η.
        let w = core.receive(.watch, from: addr(4), originIncarnation: 0, now: at(150 * ms), map: &map)
        #expect(heartbeatTargets(w) == [addr(4)])
        #expect(heartbeatTargets(core.tick(now: at(200 * ms), map: &map)) == [addr(3), addr(4)])
        // Without a new `.watch` it stops after the watch lifetime (3δ).
        var t = at(300 * ms)
        var last: Set<IPAddress> = []
        while t <= at(150 * ms + s.watchLifetime + 100 * ms) {
            // keep 1 alive so that nothing else happens
            _ = core.receive(.heartbeat(sequence: 0, periodMillis: 100), from: addr(1), originIncarnation: 0, now: t, map: &map)
            last = heartbeatTargets(core.tick(now: t, map: &map))
            t += s.period
        }
        #expect(last == [addr(3)])
        #expect(core.stats.heartbeatsSent >= 20)
    }

    /// A predecessor that heartbeats us gets no watch, at the start or later; one that falls silent
    /// for two periods is asked again.
    @Test func watchOnlyWhenThePredecessorIsSilent() throws {
        let s = try defaults()
        var map = makeMap([1, 2, 3, 4])
        var core = DetectorCore(settings: s, selfAddress: addr(2), now: 0)
        _ = core.mapChanged(map, now: 0)
        func watches(_ out: [DetectorOutput]) -> Int {
            out.filter { if case .send(.watch, _, _) = $0 { true } else { false } }.count
        }
        var t: UInt64 = 0
        var sent = 0
        while t < at(10 * s.watchRefresh).nanos {
            _ = core.receive(.heartbeat(sequence: 0, periodMillis: 100), from: addr(1), originIncarnation: 0, now: Instant(nanos: t), map: &map)
            sent += watches(core.tick(now: Instant(nanos: t), map: &map))
            t += s.period.nanos / 2
        }
        #expect(sent == 0)
        // Silent from now: a watch within three periods (before the timeout runs out).
        let silentFrom = t
        var first: UInt64?
        while t < silentFrom + 3 * s.period.nanos, first == nil {
            t += s.period.nanos / 4
            if watches(core.tick(now: Instant(nanos: t), map: &map)) > 0 { first = t }
        }
        #expect(first != nil)
    }

    @Test func nextDeadlineCoversTimersWithoutBusyTicking() throws {
        let s = try defaults()
        var net = warmNet(8, settings: s, until: at(5 * sec))
        // Over 5 s each node ticks about once per η (heartbeats) plus its re-watch: no busy loop.
        for i in 1...8 {
            let st = net.core(i).stats
            #expect(st.heartbeatsSent >= 48 && st.heartbeatsSent <= 53)
            #expect(st.heartbeatsReceived >= 45)
            #expect(st.suspicions == 0)
        }
        net.run(until: at(6 * sec))
        #expect(net.marked(.suspect).isEmpty)
    }
}

func isRefute(_ o: DetectorOutput) -> Bool {
    if case .refute = o { true } else { false }
}

@Suite struct HelperRelayTests {
    // Defect 3 of the first wave: a helper asked again in a later probe round of the same
    // suspicion kept one relay entry per round and forwarded the target's answer once per entry.
    @Test func answerForwardedOncePerRequesterWhateverTheRounds() throws {
        var map = makeMap([1, 2, 3])
        var helper = DetectorCore(settings: try defaults(), selfAddress: addr(2), now: 0)
        _ = helper.mapChanged(map, now: 0)
        for round in 0..<4 {
            let out = helper.receive(
                .probeRequest(target: addr(3), targetIncarnation: 0, nonce: 77), from: addr(1), originIncarnation: 0,
                now: at(50 * ms * UInt64(round)), map: &map)
            #expect(out.contains { if case .send(.probe(addr(1), 77), addr(3), _) = $0 { true } else { false } })
        }
        let out = helper.receive(
            .probeAck(target: addr(3), targetIncarnation: 0, nonce: 77), from: addr(3), originIncarnation: 0,
            now: at(200 * ms), map: &map)
        let forwards = out.filter { if case .send(.probeAck, addr(1), _) = $0 { true } else { false } }
        #expect(forwards.count == 1)
        #expect(helper.stats.probeAcksRelayed == 1)
        // A late duplicate answer finds no relay left.
        let again = helper.receive(
            .probeAck(target: addr(3), targetIncarnation: 0, nonce: 77), from: addr(3), originIncarnation: 0,
            now: at(210 * ms), map: &map)
        #expect(!again.contains { if case .send(.probeAck, _, _) = $0 { true } else { false } })
    }
}

@Suite struct DisseminationPathTests {
    /// A death must reach every survivor by each dissemination path alone: the multicast notice,
    /// and the binomial-graph unicasts. Each run cuts one path in the test network.
    func run(dropping path: String) throws -> TestNet {
        var net = warmNet(16, settings: try defaults())
        if path == "multicast" { net.dropMulticastDeadNotices = true } else { net.dropUnicastDeadNotices = true }
        net.crash(9)
        net.run(until: net.now + 3 * sec)
        return net
    }

    @Test(arguments: ["multicast", "unicast"]) func everySurvivorLearnsTheDeathThroughTheOtherPath(path: String) throws {
        let net = try run(dropping: path)
        for i in (1...16) where i != 9 {
            #expect(net.state(of: 9, at: i) == .dead, "node \(i) does not know 9 died with the \(path) path cut")
        }
    }
}

@Suite struct DriftToleranceEdgeTests {
    /// A detector observing 1 that hears it every η until `t`, then ticks once after `gap`.
    func lateBy(_ gap: TimeSpan) throws -> (DetectorCore, Instant?, [DetectorOutput]) {
        var map = makeMap([1, 2])
        let s = try defaults()
        var core = DetectorCore(settings: s, selfAddress: addr(2), now: 0)
        _ = core.mapChanged(map, now: 0)
        var t = Instant.zero
        while t <= at(3 * sec) {
            _ = core.receive(.heartbeat(sequence: 1, periodMillis: 100), from: addr(1), originIncarnation: 0, now: t, map: &map)
            _ = core.tick(now: t, map: &map)
            t += s.period
        }
        let last = t - s.period
        let before = core.observedDeadline
        let out = core.tick(now: last + gap, map: &map)
        _ = before
        return (core, core.observedDeadline, out)
    }

    @Test func tickLateByToleranceMinusOneMillisecondIsOnTime() throws {
        let s = try defaults()
        let (core, deadline, out) = try lateBy(s.period + s.driftTolerance - 1 * ms)
        #expect(core.stats.lateTicks == 0)
        #expect(!out.contains { if case .event(.lateTick) = $0 { true } else { false } })
        #expect(deadline == at(3 * sec + s.timeout))  // not extended
    }

    @Test func tickLateByTolerancePlusOneMillisecondIsLate() throws {
        let s = try defaults()
        let gap = s.period + s.driftTolerance + 1 * ms
        let (core, deadline, out) = try lateBy(gap)
        #expect(core.stats.lateTicks == 1)
        #expect(out.contains { if case .event(.lateTick(let pause, _, _, _, _)) = $0 { pause == gap - s.period } else { false } })
        // The deadline moved by the pause (η/2 + 1 ms).
        #expect(deadline == at(3 * sec + s.timeout + s.driftTolerance + 1 * ms))
    }
}

/// Defect 12: docs/DETECTOR.md drifted from the code. Its table of defaults and its watch cadence
/// must say what `DetectorSettings.default` is.
@Suite struct DetectorDocTests {
    @Test func docTableMatchesTheDefaults() throws {
        let root = URLPath.repoRoot(#filePath)
        let doc = try #require(readFile(root + "/docs/DETECTOR.md"))
        let d = DetectorSettings.default
        #expect(doc.contains("| `period` η | \(d.period / ms) ms |"))
        #expect(doc.contains("| `timeout` δ | \(d.timeout / ms) ms |"))
        #expect(doc.contains("| `confirmWindow` | \(d.confirmWindow / ms) ms |"))
        #expect(doc.contains("max(3δ, 6 s)"))
        #expect(d.watchLifetime == max(3 * d.timeout, 6 * sec))
        #expect(doc.contains("`watchLifetime / 3`"))
        #expect(d.watchRefresh == max(d.watchLifetime / 3, d.period))
        // The worked example of the startup grace.
        #expect(d.startupGrace(memberCount: 8) == 1900 * ms)
        #expect(doc.contains("= 1.9 s"))
    }
}

enum URLPath {
    /// The repository root: three levels above this test file (Tests/DetectorTests/X.swift).
    static func repoRoot(_ file: String) -> String {
        var parts = file.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }
}

func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}
