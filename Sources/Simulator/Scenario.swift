import Cluster
import NodeMap

/// The timeline `discd simulate` runs, as a value tests can run too: run until the cluster has
/// converged, wait `settle`, crash `crash` random nodes and stop `stop` others cleanly (or do so at
/// `crashAt`), optionally restart them after `restartAfter`, split the network for a window, and
/// run until `duration`; a departure still being learned of at the end is followed for up to 60 s.
public struct Scenario: Sendable {
    public var duration: UInt64
    public var crash: Int
    public var stop: Int
    public var crashAt: UInt64?
    /// Wait after convergence before the crash.
    public var settle: UInt64
    public var restartAfter: UInt64?
    public var partition: (at: UInt64, end: UInt64)?
    public var partitionFraction: Double

    public init(
        duration: UInt64, crash: Int = 1, stop: Int = 0, crashAt: UInt64? = nil, settle: UInt64,
        restartAfter: UInt64? = nil, partition: (at: UInt64, end: UInt64)? = nil, partitionFraction: Double = 0.5
    ) {
        self.duration = duration
        self.crash = crash
        self.stop = stop
        self.crashAt = crashAt
        self.settle = settle
        self.restartAfter = restartAfter
        self.partition = partition
        self.partitionFraction = partitionFraction
    }

    /// What happened, for the caller's report.
    public struct Outcome: Sendable {
        public var crashedAt: UInt64?
        public var victims: [Int] = []
        public var neverConverged = false
        public var crashAfterDuration = false
    }

    /// Runs the timeline on `sim`; `note` gets a sentence for each step (progress output).
    @discardableResult
    public func run(on sim: Simulator, note: (String) -> Void = { _ in }) -> Outcome {
        var outcome = Outcome()
        var crashTime = crashAt
        var crashed = false
        var restartTime: UInt64?
        var partitionApplied = false
        var healed = false
        while sim.now < duration {
            var next = duration
            if let c = crashTime, !crashed { next = min(next, c) }
            if let r = restartTime { next = min(next, r) }
            if let w = partition {
                if !partitionApplied { next = min(next, w.at) } else if !healed { next = min(next, w.end) }
            }
            if crashTime == nil, crash + stop > 0 {
                sim.run(until: next) { sim.allStarted && sim.convergedAt != nil }
                if let c = sim.convergedAt, sim.allStarted {
                    note("converged: every live map holds the \(sim.liveCount) live nodes")
                    crashTime = c + settle
                    continue
                }
            } else {
                sim.run(until: next)
            }
            if let c = crashTime, !crashed, sim.now >= c {
                crashed = true
                outcome.crashedAt = sim.now
                let victims = sim.pickRunning(crash + stop)
                for (k, v) in victims.enumerated() {
                    if k < crash { sim.crash(v) } else { sim.stop(v) }
                }
                outcome.victims = victims
                note("crashed \(victims.prefix(crash).map { "\(sim.addresses[$0])" }.joined(separator: ", "))"
                    + (stop > 0 ? "; stopped \(victims.dropFirst(crash).map { "\(sim.addresses[$0])" }.joined(separator: ", "))" : ""))
                if let d = restartAfter { restartTime = sim.now + d }
            }
            if let r = restartTime, sim.now >= r {
                restartTime = nil
                for v in outcome.victims { sim.restart(v) }
                note("restarted \(outcome.victims.count) node(s) with new incarnations")
            }
            if let w = partition {
                if !partitionApplied, sim.now >= w.at {
                    partitionApplied = true
                    let k = max(1, Int(Double(sim.nodeCount) * partitionFraction))
                    sim.partition(sim.pickRunning(k))
                    note("partition: \(k) nodes cut off")
                } else if partitionApplied, !healed, sim.now >= w.end {
                    healed = true
                    sim.heal()
                    note("partition healed")
                }
            }
        }
        if crashed, !sim.departures.allSatisfy({ $0.pending == 0 }) {
            note("running on until every survivor knows of the departures (at most 60 s more)")
            sim.runUntilDeparturesKnown(limit: sim.now + 60_000_000_000)
        }
        if crashTime != nil, !crashed {
            outcome.crashAfterDuration = true
            note("warning: the crash was due after the duration; nothing was crashed")
        }
        if crashTime == nil, crash + stop > 0 {
            outcome.neverConverged = true
            note("warning: never converged; nothing was crashed")
        }
        return outcome
    }
}
