import NodeMap
import Testing
import Wire

@testable import Detector

/// `lossGrace`: an observer whose own receive sockets dropped datagrams (the shell reports the
/// kernel's count with `localLoss`) gives its suspect one more window before it declares it dead;
/// once per suspicion, so a real death is still declared within δ + confirmWindow + lossGrace.
@Suite struct LossGraceTests {
    /// Node 6 (the observer of 5) hears nothing at all for `deafFor` from `start` (its socket buffer
    /// overflows), reporting drops every 50 ms when `reportLoss`; `crash` crashes 5 at `start`.
    func deafObserver(deafFor: TimeSpan, reportLoss: Bool, crash: Bool = false) throws -> (TestNet, Instant) {
        var net = warmNet(8, settings: try defaults())
        #expect(net.marked(.suspect).isEmpty, "false suspicion during warm-up")
        // 5's refutation would reach 6 by the test network's direct announce, past the drop.
        net.announceOnRefute = false
        let start = net.now
        if crash { net.crash(5) }
        net.drop = { _, to, _ in to == addr(6) }
        while net.now < start + deafFor {
            net.run(until: min(net.now + 50 * ms, start + deafFor))
            if reportLoss { net.cores[addr(6)]!.localLoss(dropped: 10, now: net.now) }
        }
        net.drop = { _, _, _ in false }
        net.run(until: start + 4 * sec)
        return (net, start)
    }

    @Test func withoutLossReportsADeafObserverDeclaresALiveNodeDead() throws {
        // The control: deaf for δ + confirmWindow + 2η, 6 declares 5 dead although 5 never stopped.
        let (net, start) = try deafObserver(deafFor: 1100 * ms, reportLoss: false)
        let dead = try #require(net.firstTime(5, became: .dead, at: 6))
        #expect(dead <= start + net.settings.timeout + net.settings.confirmWindow + bound)
        #expect(net.core(6).stats.lossGraces == 0)
    }

    @Test func reportedLossGivesTheSuspectOneMoreWindow() throws {
        let (net, _) = try deafObserver(deafFor: 1100 * ms, reportLoss: true)
        #expect(net.marked(.dead).isEmpty, "a live node was declared dead: \(net.marked(.dead))")
        for i in 1...8 { #expect(net.state(of: 5, at: i) == .alive) }
        let s = net.core(6).stats
        #expect(s.suspicions == 1)
        #expect(s.refutedSuspicions == 1)
        #expect(s.lossGraces == 1)
        #expect(s.localDrops == 10 * 22)
        #expect(net.logs[addr(6)]!.contains {
            if case .lossGrace(let a, let grace, _, let drops) = $0 { a == addr(5) && grace == net.settings.lossGrace && drops > 0 } else { false }
        })
    }

    @Test func theGraceIsGrantedOnceSoALongerSilenceStillKills() throws {
        // Deaf for longer than δ + confirmWindow + lossGrace: the verdict comes at the grace's end.
        let (net, start) = try deafObserver(deafFor: 2 * sec, reportLoss: true)
        let s = net.settings
        let dead = try #require(net.firstTime(5, became: .dead, at: 6))
        #expect(dead <= start + s.timeout + s.confirmWindow + s.lossGrace + bound)
        #expect(dead >= start + s.timeout - s.period + s.confirmWindow + s.lossGrace)
        let gracesFor5 = net.logs[addr(6)]!.filter { if case .lossGrace(let a, _, _, _) = $0 { a == addr(5) } else { false } }
        #expect(gracesFor5.count == 1)
        // The run behind 5 (probed while 6 was still deaf) got its own grace, and outlived the deafness.
        #expect(net.marked(.dead) == [addr(5)])
    }

    @Test func aRealDeathIsDeclaredWithinTheGrace() throws {
        // Deaf a little past the grace: 5 is declared dead at its end, 6's next predecessor (4) is
        // heard again before its own deadline.
        let (net, start) = try deafObserver(deafFor: 1500 * ms, reportLoss: true, crash: true)
        let s = net.settings
        let dead = try #require(net.firstTime(5, became: .dead, at: 6))
        #expect(dead <= start + s.timeout + s.confirmWindow + s.lossGrace + bound)
        #expect(net.core(6).stats.deathsDeclared == 1)
        for i in [1, 2, 3, 4, 6, 7, 8] { #expect(net.state(of: 5, at: i) == .dead) }
        #expect(net.marked(.dead) == [addr(5)])
    }

    @Test func lossLongBeforeTheSilenceGivesNoGrace() throws {
        // Drops reported, then 2 s of normal traffic, then a crash: the death is declared on time.
        var net = warmNet(8, settings: try defaults())
        net.cores[addr(6)]!.localLoss(dropped: 5, now: net.now)
        net.run(until: net.now + 2 * sec)
        let crash = net.now
        net.crash(5)
        net.run(until: crash + 3 * sec)
        let s = net.settings
        let dead = try #require(net.firstTime(5, became: .dead, at: 6))
        #expect(dead <= crash + s.timeout + s.confirmWindow + bound)
        #expect(net.core(6).stats.lossGraces == 0)
        #expect(net.core(6).stats.localDrops == 5)
    }

    @Test func zeroGraceTurnsItOff() throws {
        var settings = try defaults()
        settings.lossGrace = .zero
        try settings.validate()
        #expect(try DetectorSettings(lossGrace: .zero).lossGrace == .zero)
        #expect(try defaults().lossGrace == defaults().confirmWindow, "the default is the confirm window")
        var net = warmNet(8, settings: settings)
        net.announceOnRefute = false
        let start = net.now
        net.drop = { _, to, _ in to == addr(6) }
        while net.now < start + 1100 * ms {
            net.run(until: net.now + 50 * ms)
            net.cores[addr(6)]!.localLoss(dropped: 1, now: net.now)
        }
        net.drop = { _, _, _ in false }
        net.run(until: start + 4 * sec)
        #expect(net.firstTime(5, became: .dead, at: 6) != nil)
        #expect(net.core(6).stats.lossGraces == 0)
    }

    @Test func aLongGraceIsRefused() {
        #expect(throws: DetectorSettings.Error.durationTooLong(name: "loss grace", value: 2 * DetectorSettings.maxDuration)) {
            try DetectorSettings(lossGrace: 2 * DetectorSettings.maxDuration)
        }
    }
}
