import Cluster
import Detector
import Discovery
import NodeMap
import Testing
import Wire
@testable import Simulator

// Sizes are chosen for a debug build on 2 cores (the whole suite in well under 2 minutes):
// 300 nodes for convergence, 200 for the fault scenarios, 100 for determinism.
// `bench/sim_bench.sh` runs 1,000 and 10,000 nodes in release.

struct ConvergenceTests {
    @Test func everyLiveMapConvergesToTheLiveSet() throws {
        let sim = try SimSetup.converged(SimSetup.config(nodes: 300))
        #expect(sim.membersEqualLiveSet())
        #expect(sim.liveCount == 300)
        for i in 0..<300 {
            let map = try #require(sim.node(i)?.map)
            #expect(map.nodes.allSatisfy { $0.state == .alive })
        }
        #expect(sim.falseDeaths.isEmpty)
        // Keep running: the maps stay converged.
        sim.run(until: sim.now + 3 * SimSetup.s)
        #expect(sim.membersEqualLiveSet())
        #expect(sim.falseDeaths.isEmpty)
    }
}

struct CrashTests {
    @Test func crashIsKnownToEverySurvivorWithinTheBound() throws {
        let config = SimSetup.config(nodes: 200)
        let sim = try SimSetup.converged(config)
        sim.run(until: sim.now + config.detector!.startupGrace(memberCount: 200).nanos + SimSetup.s)
        let victim = sim.pickRunning(1)[0]
        sim.crash(victim)
        // Every survivor's map still holds the victim as a member: not the live set.
        #expect(!sim.membersEqualLiveSet())
        #expect(sim.runUntilDeparturesKnown(limit: sim.now + 10 * SimSetup.s))
        let d = try #require(sim.departures.last)
        let bound = try #require(config.detectionBound(members: 200))
        #expect(d.survivors == 199)
        #expect(d.pending == 0)
        let worst = try #require(d.latencies.max())
        #expect(worst <= bound, "slowest survivor learned after \(worst) ns, bound \(bound) ns")
        // Detection cannot beat the timeout: nobody heard from it for δ at least.
        #expect(d.latencies.allSatisfy { $0 >= config.detector!.timeout.nanos - config.latency.max })
        sim.run(until: sim.now + SimSetup.s)
        #expect(sim.membersEqualLiveSet())
        #expect(sim.falseDeaths.isEmpty)
    }

    @Test func cleanStopIsKnownAtOnce() throws {
        let sim = try SimSetup.converged(SimSetup.config(nodes: 200))
        let victim = sim.pickRunning(1)[0]
        sim.stop(victim)
        #expect(sim.runUntilDeparturesKnown(limit: sim.now + 2 * SimSetup.s))
        let d = try #require(sim.departures.last)
        // One multicast: within the largest latency (no loss).
        #expect(d.latencies.allSatisfy { $0 <= sim.config.latency.max })
        #expect(sim.node(sim.pickRunning(1)[0])?.map[sim.addresses[victim]]?.state == .left)
    }

    @Test func restartWithNewIncarnationRejoinsAliveEverywhere() throws {
        let config = SimSetup.config(nodes: 200)
        let sim = try SimSetup.converged(config)
        sim.run(until: sim.now + config.detector!.startupGrace(memberCount: 200).nanos + SimSetup.s)
        let victim = sim.pickRunning(1)[0]
        let oldIncarnation = try #require(sim.node(victim)?.incarnation)
        sim.crash(victim)
        #expect(sim.runUntilDeparturesKnown(limit: sim.now + 5 * SimSetup.s))
        sim.restart(victim)
        let newIncarnation = try #require(sim.node(victim)?.incarnation)
        #expect(newIncarnation > oldIncarnation)
        #expect(sim.runUntilConverged(limit: sim.now + 10 * SimSetup.s) != nil)
        for i in sim.runningNodes where i != victim {
            let n = try #require(sim.node(i)?.map[sim.addresses[victim]])
            #expect(n.state == .alive)
            #expect(n.incarnation == newIncarnation)
        }
        #expect(sim.node(victim)?.map.memberCount == 200)
        #expect(sim.falseDeaths.isEmpty)
    }
}

struct FalseDeathTests {
    @Test func noFalseDeathsWithTenPercentLoss() throws {
        let sim = try Simulator(config: SimSetup.config(nodes: 200, loss: 0.10))
        sim.run(until: 20 * SimSetup.s)
        #expect(sim.traffic.lost > 0)
        // The detector declares no live node dead, and no death notice spreads one.
        #expect(sim.detectorTotals().deathsDeclared == 0)
        #expect(sim.falseDeaths.allSatisfy { $0.cause == .expired })
        // Discovery expiry is a backstop while the detector runs (10 intervals), and a node held
        // dead by mistake is told and refutes: no live node is ever marked dead.
        #expect(sim.falseDeaths.isEmpty)
        #expect(sim.membersEqualLiveSet())
    }

    @Test func noFalseDeathsWithPausesShorterThanTheSlack() throws {
        // δ = 500 ms: a 200 ms pause leaves 300 ms of slack; each node pauses every 2 s on average.
        let pauses = PauseModel(length: 200 * SimSetup.ms, meanInterval: 2 * SimSetup.s)
        let sim = try Simulator(config: SimSetup.config(nodes: 200, pauses: pauses))
        sim.run(until: 15 * SimSetup.s)
        #expect(sim.pausesApplied > 1000)
        #expect(sim.falseDeaths.isEmpty, "\(sim.falseDeaths)")
        #expect(sim.membersEqualLiveSet())
    }
}

extension FalseDeathTests {
    /// The oracle's other half: a live node that does get marked dead is found and counted. A pause
    /// of 3 s is far beyond δ = 500 ms: the paused node's observer declares it dead while it runs.
    @Test func pausesBeyondTheTimeoutAreFoundAsFalseDeaths() throws {
        let pauses = PauseModel(length: 3 * SimSetup.s, meanInterval: 4 * SimSetup.s)
        let sim = try Simulator(config: SimSetup.config(nodes: 100, pauses: pauses))
        sim.run(until: 12 * SimSetup.s)
        #expect(sim.pausesApplied > 0)
        #expect(!sim.falseDeaths.isEmpty)
        #expect(sim.falseDeaths.allSatisfy { !$0.acrossPartition })
        #expect(sim.falseDeaths.contains { $0.cause == .declared })
        #expect(sim.falseDeathMarks >= sim.falseDeaths.count)
    }

    /// A paused node's full socket buffer drops datagrams; at its next tick the simulator tells the
    /// node, as the daemon does with the kernel's count (`ClusterNode.localLoss`).
    @Test func socketBufferOverflowsReachTheNodesAsLocalLoss() throws {
        let pauses = PauseModel(length: 300 * SimSetup.ms, meanInterval: 2 * SimSetup.s)
        var config = SimSetup.config(nodes: 100, pauses: pauses)
        config.socketBuffer = 2 * (768 + 100)
        let sim = try Simulator(config: config)
        sim.run(until: 10 * SimSetup.s)
        let overflows = sim.traffic.bufferOverflows
        let told = sim.detectorTotals().localDrops
        #expect(overflows > 0)
        // Every overflow is told at the node's next tick (the last pauses' perhaps not yet).
        #expect(told > 0 && told <= overflows, "\(told) of \(overflows)")
        #expect(told + sim.overflowed.reduce(0, +) == overflows)
    }
}

struct PartitionTests {
    @Test func partitionThenHealBothSidesReconverge() throws {
        // Dead entries ignore announces of the same incarnation until they are purged; a short purge
        // keeps the test fast (docs/SIMULATOR.md: with the default 60 s the heal takes about a minute).
        var config = SimSetup.config(nodes: 200)
        config.discovery = SimSetup.discovery()
        let sim = try SimSetup.converged(config)
        sim.run(until: sim.now + config.detector!.startupGrace(memberCount: 200).nanos + SimSetup.s)
        let sideB = sim.pickRunning(70)
        let sideA = sim.runningNodes.filter { !sideB.contains($0) }
        sim.partition(sideB)
        // Each side converges to itself: the other side's nodes are declared dead there.
        let split = try #require(sim.runUntilConverged(limit: sim.now + 20 * SimSetup.s))
        #expect(sim.membersEqual(group: sideA) && sim.membersEqual(group: sideB))
        #expect(split > sim.epochs.last!.since)
        #expect(sim.falseDeaths.allSatisfy { $0.acrossPartition })
        #expect(sim.falseDeaths.count == 200)
        // Every map of each side marked every node of the other dead (at least once: a purged
        // tombstone heard of again can be marked twice).
        #expect(sim.falseDeathMarks >= 2 * 70 * 130)
        sim.run(until: sim.now + SimSetup.s)
        sim.heal()
        let healStart = sim.now
        // Just after the heal, a death of a node of the other side is still the partition's (a
        // suspicion begun on the cut's silence runs its window out); a pair of one side is not,
        // and after δ + window + grace neither is.
        let d = config.detector!
        #expect(sim.cutBeforeHeal(sideA[0], sideB[0]) && sim.cutBeforeHeal(sideB[0], sideA[0]))
        #expect(!sim.cutBeforeHeal(sideA[0], sideA[1]) && !sim.cutBeforeHeal(sideB[0], sideB[1]))
        let healed = try #require(sim.runUntilConverged(limit: sim.now + 20 * SimSetup.s))
        #expect(healed > healStart)
        #expect(sim.membersEqualLiveSet())
        #expect(sim.idAssignmentsAgree())
        sim.run(until: Swift.max(sim.now, healStart + (d.timeout + d.confirmWindow + d.lossGrace).nanos))
        #expect(!sim.cutBeforeHeal(sideA[0], sideB[0]))
    }
}

struct CollisionTests {
    @Test func collidingDerivedIDsEndDistinctAndAgreed() throws {
        let config = SimSetup.config(nodes: 200, collisions: 6)
        // The colliders really share their derived ID with another node.
        let derived = (0..<200).map { NodeID.derived(from: config.address(of: $0)) }
        #expect(Set(derived).count == 194)
        let sim = try SimSetup.converged(config)
        #expect(sim.idAssignmentsAgree())
        let map = try #require(sim.node(0)?.map)
        let ids = (0..<200).compactMap { map[sim.addresses[$0]]?.id }
        #expect(Set(ids).count == 200)
        #expect(map.collisionLosers.count == 6)
        #expect(sim.falseDeaths.isEmpty)
    }
}

struct DeterminismTests {
    func run(seed: UInt64) throws -> (UInt64, Int, TrafficCounters) {
        let pauses = PauseModel(length: 100 * SimSetup.ms, meanInterval: 5 * SimSetup.s)
        var config = SimSetup.config(nodes: 100, seed: seed, loss: 0.05, pauses: pauses)
        config.duplication = 0.02
        config.latency = try LatencyModel(base: 100_000, max: 3_000_000, jitter: .lognormal(sigma: 0.8), buckets: 32)
        let sim = try Simulator(config: config)
        sim.run(until: 4 * SimSetup.s)
        sim.crash(3)
        sim.schedule(.restart(3), at: sim.now + 2 * SimSetup.s)
        sim.run(until: 8 * SimSetup.s)
        return (sim.traceHash, sim.events, sim.traffic)
    }

    @Test func sameSeedSameRunDifferentSeedDifferentRun() throws {
        let a = try run(seed: 42)
        let b = try run(seed: 42)
        let c = try run(seed: 43)
        #expect(a.0 == b.0)
        #expect(a.1 == b.1)
        #expect(a.2 == b.2)
        #expect(a.0 != c.0)
    }

    /// Below debug, a node hands a repeated announce to the map alone (`ClusterNode`'s short path),
    /// and the simulator skips its rearm and oracle after it. At debug every input takes the full
    /// path and the bookkeeping after it. The run must be the same datagram for datagram: the same
    /// trace (every delivery and every datagram sent), the same traffic, the same convergence.
    @Test func theRepeatedAnnounceShortPathChangesNoRun() throws {
        func run(_ level: LogLevel) throws -> (UInt64, Int, TrafficCounters, [UInt64?]) {
            let pauses = PauseModel(length: 100 * SimSetup.ms, meanInterval: 5 * SimSetup.s)
            var config = SimSetup.config(nodes: 120, seed: 17, loss: 0.05, pauses: pauses)
            config.duplication = 0.02
            config.logLevel = level
            let sim = try Simulator(config: config)
            sim.run(until: 4 * SimSetup.s)
            sim.crash(5)
            sim.stop(9)
            sim.schedule(.restart(5), at: sim.now + 2 * SimSetup.s)
            sim.run(until: 9 * SimSetup.s)
            return (sim.traceHash, sim.events, sim.traffic, sim.epochs.map(\.convergedAt))
        }
        let short = try run(.warning)
        let full = try run(.debug)
        #expect(short.0 == full.0)
        #expect(short.1 == full.1)
        #expect(short.2 == full.2)
        #expect(short.3 == full.3)
        #expect((short.3.first ?? nil) != nil)
    }
}

struct EventQueueTests {
    @Test func popsInTimeThenSequenceOrder() {
        var q = EventQueue()
        var g = SplitMix64(seed: 5)
        var pushed: [(UInt64, Int32)] = []
        for k in 0..<2000 {
            let t = g.next() % 50
            q.push(t, .tick, Int32(k))
            pushed.append((t, Int32(k)))
        }
        let expected = pushed.sorted { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }.map { $0.1 }
        var got: [Int32] = []
        while let e = q.pop() { got.append(e.a) }
        #expect(got == expected)
    }

    @Test func latencySlicesFollowTheDistribution() throws {
        let m = try LatencyModel(base: 200_000, max: 2_000_000)
        var g = SplitMix64(seed: 9)
        var counts = [Int](repeating: 0, count: m.sliceCount)
        for _ in 0..<160_000 { counts[m.slice(g.next() >> 32)] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 600 })
        let ln = try LatencyModel(base: 100_000, max: 4_100_000, jitter: .lognormal(sigma: 0.6), buckets: 32)
        var lc = [Int](repeating: 0, count: ln.sliceCount)
        for _ in 0..<100_000 { lc[ln.slice(g.next() >> 32)] += 1 }
        // Median of the jitter at a quarter of the range: about half the draws below slice 8.
        let below = lc.prefix(8).reduce(0, +)
        #expect(below > 45_000 && below < 55_000)
    }
}

/// The timeline `discd simulate` runs, run by a test: the scenario lives in the Simulator target.
@Suite struct ScenarioTests {
    @Test func crashStopAndRestartTimelineEndsWithEveryDepartureKnown() throws {
        let config = SimSetup.config(nodes: 60, seed: 11)
        let sim = try Simulator(config: config)
        let d = config.detector!
        let scenario = Scenario(
            duration: 12 * SimSetup.s, crash: 2, stop: 1, settle: d.startupGrace(memberCount: 60).nanos + SimSetup.s,
            restartAfter: 3 * SimSetup.s)
        var notes: [String] = []
        let outcome = scenario.run(on: sim) { notes.append($0) }
        #expect(!outcome.neverConverged)
        #expect(outcome.victims.count == 3)
        #expect(outcome.crashedAt != nil)
        #expect(sim.departures.count == 3)
        #expect(sim.departures.allSatisfy { $0.pending == 0 })
        #expect(sim.falseDeaths.isEmpty)
        // Restarted with new incarnations, every map holds all 60 again by the end.
        #expect(sim.liveCount == 60)
        #expect(sim.membersEqualLiveSet())
        #expect(notes.count >= 3)
        // The settled load: from convergence to the crash, not beyond it (the deaths' notices fall
        // after), and heartbeats dominate it.
        let r = SimReport(sim)
        let w = try #require(r.steadyBeforeEvents)
        #expect(w.from == sim.startupConvergence && w.to == outcome.crashedAt)
        let st = try #require(r.steadySentPerNode)
        let hb = w.traffic.sentByType[Int(MessageType.heartbeat.rawValue)]
        #expect(st.messages > 0 && Double(hb) > 0.5 * Double(w.traffic.sent))
        #expect(w.traffic.sentByType[Int(MessageType.dead.rawValue)] == 0)
        #expect(r.traffic.sent > w.traffic.sent)
    }
}
