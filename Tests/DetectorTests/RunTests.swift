import NodeMap
import Testing
import Wire

@testable import Detector

/// Runs of adjacent failures (`Run.swift`): after declaring its predecessor dead, a node probes the
/// next `maxRun` predecessors together for one confirm window and declares the silent ones, instead
/// of finding them one at a time (k × (δ + window) for the last of k).
@Suite struct RunTests {
    /// Crashes `victims` at once in a warm net of `n`, runs for `for`, and returns the net.
    func crashTogether(_ n: Int, _ victims: [Int], for span: TimeSpan) throws -> (TestNet, Instant) {
        var net = warmNet(n, settings: try defaults())
        #expect(net.marked(.suspect).isEmpty, "false suspicion during warm-up")
        let crash = net.now
        for v in victims { net.crash(v) }
        net.run(until: crash + span)
        return (net, crash)
    }

    func latestDeath(_ net: TestNet, of victims: [Int], survivors: [Int]) throws -> Instant {
        var last = Instant.zero
        for i in survivors {
            for v in victims {
                let t = try #require(net.firstTime(v, became: .dead, at: i), "node \(i) never marked \(v) dead")
                last = max(last, t)
            }
        }
        return last
    }

    @Test func aRunOfSixIsDeclaredWithinTwoWindows() throws {
        let victims = Array(5...10)
        let (net, crash) = try crashTogether(16, victims, for: 4 * sec)
        let s = net.settings
        let survivors = (1...16).filter { !victims.contains($0) }
        let last = try latestDeath(net, of: victims, survivors: survivors)
        // 11 suspects 10 after δ, declares it a window later, and the run 9...5 one window after that
        // (one at a time it would be 6 × (δ + window) = 5.4 s).
        #expect(last <= crash + s.timeout + 2 * s.confirmWindow + bound, "last death known at +\((last - crash) / ms) ms")
        #expect(net.marked(.dead) == Set(victims.map(addr)))
        #expect(net.marked(.suspect) == [addr(10)])
        #expect(net.core(11).stats.runsProbed == 1)
        #expect(net.core(11).stats.runDeaths == 5)
        #expect(net.core(11).observed == addr(4))
        let ordered = net.changesAreOrdered()
        #expect(ordered)
    }

    @Test func aRunLongerThanMaxRunIsProbedInTurns() throws {
        // 12 adjacent: 14 declares 13, probes 12...5 (maxRun 8), declares them, probes 4...2.
        let victims = Array(2...13)
        #expect(DetectorCore.maxRun == 8)
        let (net, crash) = try crashTogether(24, victims, for: 5 * sec)
        let s = net.settings
        let survivors = (1...24).filter { !victims.contains($0) }
        let last = try latestDeath(net, of: victims, survivors: survivors)
        #expect(last <= crash + s.timeout + 3 * s.confirmWindow + bound, "last death known at +\((last - crash) / ms) ms")
        #expect(net.marked(.dead) == Set(victims.map(addr)))
        #expect(net.core(14).stats.runsProbed == 2)  // 12...5, then 4...1 (1 answers: the run ends at it)
        #expect(net.core(14).stats.runDeaths == 11)
        #expect(net.core(14).observed == addr(1))
    }

    @Test func aSingleDeathEndsTheRunAtOnce() throws {
        let (net, _) = try crashTogether(8, [5], for: 3 * sec)
        #expect(net.marked(.dead) == [addr(5)])
        #expect(net.marked(.suspect) == [addr(5)])
        let c = net.core(6)
        #expect(c.stats.runsProbed == 1)
        #expect(c.stats.runDeaths == 0)
        // 4 answered the first round: the run ended, nothing is due.
        #expect(c.runDue == nil && c.run.isEmpty)
        // The k = 3 helpers after 6, as for a suspect of 4, though 8 and 1 are in the run (4...8).
        #expect(c.runHelpers == [addr(7), addr(8), addr(1)])
        #expect(c.observed == addr(4))
        #expect(!c.isSuspecting)
    }

    @Test func aSmallRingsRunIsProbedThroughKHelpers() throws {
        // 8 nodes, 5...2 crash: 6 declares 5, then probes 4, 3, 2, 1, 8 (up to its successor 7)
        // through 7, 8 and 1, two of them run members; 1 answers, so 4...2 are declared in one run.
        let victims = [5, 4, 3, 2]
        let (net, crash) = try crashTogether(8, victims, for: 4 * sec)
        let s = net.settings
        #expect(s.confirmations == 3)
        let last = try latestDeath(net, of: victims, survivors: [1, 6, 7, 8])
        #expect(last <= crash + s.timeout + 2 * s.confirmWindow + bound, "last death known at +\((last - crash) / ms) ms")
        #expect(net.marked(.dead) == Set(victims.map(addr)))
        let c = net.core(6)
        #expect(c.runHelpers == [addr(7), addr(8), addr(1)])
        #expect(c.stats.runsProbed == 1)
        #expect(c.stats.runDeaths == 3)
        #expect(c.observed == addr(1))
        let ordered = net.changesAreOrdered()
        #expect(ordered)
    }

    @Test func aLiveHeadReachableOnlyThroughHelpersIsNotDeclared() throws {
        // 4's datagrams to 6 are lost (a one-way link): 6's direct probes of 4 go unanswered, its
        // helpers' forwarded answers are not.
        var net = warmNet(8, settings: try defaults())
        net.announceOnRefute = false
        net.drop = { from, to, _ in from == addr(4) && to == addr(6) }
        let crash = net.now
        net.crash(5)
        net.run(until: crash + 2 * sec)
        #expect(net.state(of: 5, at: 6) == .dead)
        #expect(net.state(of: 4, at: 6) != .dead)
        #expect(net.core(6).stats.runDeaths == 0)
        #expect(net.core(6).stats.runsProbed == 1)
    }

    @Test func aRunHeardFromBeforeItsVerdictEndsThere() throws {
        // 5 and 3 crash, 4 lives between them: the run behind 5 ends at 4; 3 is 4's to find.
        let (net, crash) = try crashTogether(8, [5, 3], for: 4 * sec)
        let s = net.settings
        #expect(net.marked(.dead) == [addr(5), addr(3)])
        #expect(net.core(6).stats.runDeaths == 0)
        #expect(net.core(4).stats.deathsDeclared == 1)
        let t = try #require(net.firstTime(3, became: .dead, at: 4))
        #expect(t <= crash + s.timeout + s.confirmWindow + bound)
    }
}
