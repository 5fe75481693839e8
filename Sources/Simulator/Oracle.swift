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

/// The oracle: watches every map after every input, counts convergence, learns when each
/// survivor knew of each departure, and finds false deaths.
extension Simulator {
    // MARK: Watching the maps

    func liveSetChanged() {
        recount()
        if let last = epochs.last, last.convergedAt == nil {
            // A change before convergence extends the current epoch.
        } else {
            epochs.append(ConvergenceEpoch(since: now, convergedAt: nil))
        }
        nextVerify = now
    }

    /// Recomputes which maps hold as many members as their side has running nodes.
    func recount() {
        liveOnSide = [0, 0]
        for j in 0..<count where status[j] == .running { liveOnSide[Int(side[j])] += 1 }
        convergedCount = 0
        // `lastMembers` holds each running map's member count as of its last input (`watch` runs
        // after every input): reading the maps here cost a look at every node for every start.
        for j in 0..<count {
            let ok = status[j] == .running && lastMembers[j] == liveOnSide[Int(side[j])]
            converged[j] = ok
            if ok { convergedCount += 1 }
        }
    }

    func watch(_ i: Int, _ slot: Slot) {
        let members = slot.node.memberCountInPlace()
        let ok = members == liveOnSide[Int(side[i])]
        if ok != converged[i] {
            converged[i] = ok
            convergedCount += ok ? 1 : -1
        }

        // Departures this node learned of with this input.
        if !activeDepartures.isEmpty {
            var finished = false
            for d in activeDepartures where departures[d].knownAt[i] == Departure.pendingMark {
                let a = departures[d].address
                let known: Bool
                if let n = slot.node.briefInPlace(a) {
                    known = !n.state.isMember || n.incarnation > departures[d].incarnation
                } else {
                    known = true
                }
                if known {
                    departures[d].knownAt[i] = now
                    departures[d].pending -= 1
                    if departures[d].pending == 0 { finished = true }
                }
            }
            if finished { closeFinishedDepartures() }
        }

        if !activeArrivals.isEmpty {
            var finished = false
            for a in activeArrivals where arrivals[a].knownAt[i] == Departure.pendingMark {
                if let n = slot.node.briefInPlace(arrivals[a].address), n.state.isMember, n.incarnation >= arrivals[a].incarnation {
                    arrivals[a].knownAt[i] = now
                    arrivals[a].pending -= 1
                    if arrivals[a].pending == 0 { finished = true }
                }
            }
            if finished { closeFinishedArrivals() }
        }

        // Deaths this node marked (declared, learned from a notice, expired): each is checked
        // against the live set. The node lists them itself (`recordDeaths`): finding them by a
        // scan of the map after every death learned cost O(N) per death, N³ in all when a
        // partition makes every node learn the deaths of the other side.
        lastMembers[i] = members
        let deaths = slot.node.takeRecordedDeaths()
        if !deaths.isEmpty { checkDeaths(i, slot, deaths) }
        verifyIfConverged()
    }

    /// Once every running map holds as many members as there are live nodes, checks (at most every
    /// 10 ms) that each holds the live set itself: the epoch converged then. After every input,
    /// those that change nothing included, so that the time of convergence is the same with them.
    @inline(__always)
    func verifyIfConverged() {
        if convergedCount == liveCount, liveCount > 0, allStarted, now >= nextVerify, epochs.last?.convergedAt == nil {
            verifications += 1
            if partitioned ? membersEqualOwnSide() : membersEqualLiveSet() {
                epochs[epochs.count - 1].convergedAt = now
                if !windowSet { resetTrafficWindow() }
            } else {
                nextVerify = now + 10_000_000
            }
        }
    }

    /// Whether `i` and `t` were on different sides of a partition that healed less than
    /// δ + confirm window + loss grace ago: a suspicion begun on the cut's silence still runs its
    /// window out after the heal (node 362 of 1,000 declared 357 dead 67 ms after one), and that
    /// death is the partition's, not a false one on its own side.
    func cutBeforeHeal(_ i: Int, _ t: Int) -> Bool {
        guard let h = healedAt, let d = config.detector, lastSide[i] != lastSide[t] else { return false }
        return now < h + (d.timeout + d.confirmWindow + d.lossGrace).nanos
    }

    func diagnoseInput(_ i: Int, _ effects: [Effect], _ d: (observer: Int, target: Int)) {
        if i == d.target {
            for e in effects {
                if case .multicast(let b, _) = e {
                    diagnosis.append(
                        "\(now) ns: target \(d.target) multicasts type \(b[3]); observer \(d.observer) is \(status[d.observer])")
                }
            }
        }
        guard i == d.observer, let slot = slots[i] else { return }
        let n = slot.node.map[addresses[d.target]]
        let state = n.map { "\($0.state) inc \($0.incarnation) id \($0.id)" } ?? "absent"
        if state != diagnosedState {
            diagnosis.append("\(now) ns: observer \(i) map: target \(diagnosedState) -> \(state) after \(lastInput)")
            diagnosedState = state
        }
    }

    func checkDeaths(_ i: Int, _ slot: Slot, _ deaths: [(address: IPAddress, incarnation: UInt64)]) {
        let marks = slot.node.deathMarksInPlace()
        let old = deathMarks[i]
        deathMarks[i] = marks
        let cause: FalseDeath.Cause =
            marks.declared > old.declared ? .declared : marks.expired > old.expired ? .expired : .learned
        for d in deaths {
            guard let t32 = indexOf[d.address] else { continue }
            let t = Int(t32)
            guard status[t] == .running, d.incarnation >= startIncarnation[t] else { continue }
            // Marked dead at an incarnation of its current life while it runs. A map takes a node
            // dead once per incarnation, unless it purged the tombstone and heard of the node alive
            // at that incarnation again: then that is a second mark.
            falseDeathMarks += 1
            let target = FalseKey(target: t32, incarnation: d.incarnation)
            if falseTargets.insert(target).inserted {
                falseDeaths.append(
                    FalseDeath(
                        time: now, target: t, incarnation: d.incarnation, firstMarkedBy: i,
                        acrossPartition: side[i] != side[t] || cutBeforeHeal(i, t), cause: cause))
            }
        }
    }
}
