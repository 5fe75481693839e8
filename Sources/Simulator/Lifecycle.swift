#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Cluster
import Detector
import Discovery
import NodeMap
import Wire

/// Node lifecycle and faults: start, crash, clean stop, restart with a new incarnation, pauses,
/// partitions; and the departures the oracle then follows.
extension Simulator {
    // MARK: Faults

    public func crash(_ i: Int) {
        scenarioEvent()
        guard status[i] == .running, let slot = slots[i] else { return }
        trace(6, UInt64(i))
        depart(i, kind: .crash, incarnation: slot.node.incarnation)
        status[i] = .crashed
        takeDown(i)
    }

    public func stop(_ i: Int) {
        scenarioEvent()
        guard status[i] == .running, let slot = slots[i] else { return }
        trace(7, UInt64(i))
        // A paused process cannot stop cleanly before it resumes; the leave goes out now regardless.
        let effects = slot.node.stop(now: Instant(nanos: now))
        send(effects, from: i)
        depart(i, kind: .stop, incarnation: slot.node.incarnation)
        status[i] = .stopped
        takeDown(i)
    }

    public func restart(_ i: Int) {
        guard status[i] == .crashed || status[i] == .stopped else { return }
        trace(8, UInt64(i))
        launch(i)
    }

    public func pause(_ i: Int, for duration: UInt64) {
        scenarioEvent()
        guard status[i] == .running, pausedUntil[i] <= now, duration > 0 else { return }
        trace(9, UInt64(i) << 32 ^ duration)
        pausedUntil[i] = now + duration
        pausesApplied += 1
        queue.push(now + duration, .resume, Int32(i))
    }

    public func partition(_ sideB: [Int]) {
        scenarioEvent()
        trace(10, UInt64(sideB.count))
        for i in 0..<count { side[i] = 0 }
        for i in sideB { side[i] = 1 }
        healedAt = nil
        partitioned = !sideB.isEmpty
        beginEpoch()
    }

    public func heal() {
        trace(11, 0)
        lastSide = side
        healedAt = now
        for i in 0..<count { side[i] = 0 }
        partitioned = false
        beginEpoch()
    }

    /// The network changed under a constant live set: convergence is measured afresh from now.
    func beginEpoch() {
        recount()
        epochs.append(ConvergenceEpoch(since: now, convergedAt: nil))
        nextVerify = now
    }

    func takeDown(_ i: Int) {
        lastIncarnation[i] = slots[i]!.node.incarnation
        slots[i] = nil
        pausedUntil[i] = 0
        held[i] = []
        heldBytes[i] = (0, 0)
        overflowed[i] = 0
        armed[i] = .max
        liveCount -= 1
        // It no longer counts as a survivor of earlier departures.
        for d in activeDepartures where departures[d].knownAt[i] == Departure.pendingMark {
            departures[d].knownAt[i] = Departure.notSurvivor
            departures[d].pending -= 1
            departures[d].survivors -= 1
        }
        closeFinishedDepartures()
        for a in activeArrivals where arrivals[a].knownAt[i] == Departure.pendingMark {
            arrivals[a].knownAt[i] = Departure.notSurvivor
            arrivals[a].pending -= 1
            arrivals[a].observers -= 1
        }
        // An arrival that went again is no longer followed.
        activeArrivals.removeAll { arrivals[$0].node == i }
        closeFinishedArrivals()
        liveSetChanged()
    }

    func closeFinishedArrivals() {
        activeArrivals.removeAll { a in
            guard arrivals[a].pending == 0 else { return false }
            arrivals[a].completedAt = now
            return true
        }
    }

    func launch(_ i: Int) {
        let incarnation = Swift.max(Self.incarnationBase + now / 1_000_000, lastIncarnation[i] + 1)
        processes[i] += 1
        let me = SelfInfo(address: addresses[i], heartbeatPort: config.heartbeatPort)
        var cfg = ClusterConfig(
            cluster: config.cluster, me: me, incarnation: incarnation, discovery: config.discovery,
            detector: config.detector, seed: Self.mix(config.seed, UInt64(i) << 20 | UInt64(processes[i])),
            logLevel: config.logLevel)
        cfg.mapCapacityHint = count
        cfg.recordDeaths = true
        let slot = Slot(ClusterNode(config: cfg, now: Instant(nanos: now)))
        slots[i] = slot
        status[i] = .running
        startIncarnation[i] = incarnation
        deathMarks[i] = (0, 0, 0)
        lastMembers[i] = 0
        liveCount += 1
        liveSetChanged()
        trace(5, UInt64(i) << 32 ^ incarnation)
        if processes[i] > 1 {
            var a = Arrival(
                node: i, address: addresses[i], incarnation: incarnation, time: now,
                knownAt: Array(repeating: Departure.notSurvivor, count: count))
            for j in 0..<count where j != i && status[j] == .running {
                a.observers += 1
                a.knownAt[j] = Departure.pendingMark
                a.pending += 1
            }
            arrivals.append(a)
            activeArrivals.append(arrivals.count - 1)
        }
        let effects = slot.node.start(now: Instant(nanos: now))
        if let d = diagnose, d.observer == i || d.target == i {
            lastInput = "start"
            diagnosis.append("\(now) ns: node \(i) starts (\(i == d.observer ? "observer" : "target"))")
        }
        afterInput(i, effects)
    }

    func depart(_ i: Int, kind: Departure.Kind, incarnation: UInt64) {
        var d = Departure(
            kind: kind, node: i, address: addresses[i], incarnation: incarnation, time: now,
            knownAt: Array(repeating: Departure.notSurvivor, count: count))
        for j in 0..<count where j != i && status[j] == .running {
            d.survivors += 1
            if knows(j, departed: addresses[i], incarnation: incarnation) {
                d.knownAt[j] = Departure.neverKnewMark
                d.neverKnew += 1
            } else {
                d.knownAt[j] = Departure.pendingMark
                d.pending += 1
            }
        }
        departures.append(d)
        activeDepartures.append(departures.count - 1)
    }

    func closeFinishedDepartures() {
        activeDepartures.removeAll { d in
            guard departures[d].pending == 0 else { return false }
            departures[d].completedAt = now
            return true
        }
    }

    /// Whether node `j`'s map shows the departed process gone (dead, left, absent, or superseded).
    @inline(__always)
    func knows(_ j: Int, departed a: IPAddress, incarnation: UInt64) -> Bool {
        guard let n = slots[j]!.node.briefInPlace(a) else { return true }
        return !n.state.isMember || n.incarnation > incarnation
    }

    func schedulePause(_ p: PauseModel, from t: UInt64) {
        // Exponential gaps with mean meanInterval / N: each node pauses once per meanInterval on average.
        let u = Double(scenarioRNG.next() >> 11 | 1) * 0x1p-53
        let gap = -log(u) * Double(p.meanInterval) / Double(count)
        queue.push(t + UInt64(Swift.min(gap, 1e15)), .pause, 0)
    }
}
