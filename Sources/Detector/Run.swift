import Events
import NodeMap
import Wire

/// A silent run (docs/DETECTOR.md "Runs"): nodes adjacent on the ring that fail together (a rack
/// whose addresses, hence IDs, are consecutive; the nodes a partition cuts off next to each other)
/// are each observed by the next, which fails too, so only the first survivor after the run finds
/// them, one at a time: k × (δ + confirmWindow) for the last of k. So when this node declares its
/// predecessor dead, it probes the next `maxRun` predecessors together, directly and through its
/// helpers, for one confirm window; then it declares them dead in ring order up to the first that
/// answered (or was heard at all). A single death costs one round of probes to live nodes, which
/// answer at once and end the run.
extension DetectorCore {
    /// How many predecessors a run probes at once.
    public static let maxRun = 8

    struct RunMember: Sendable {
        var address: IPAddress
        var id: NodeID
        var incarnation: UInt64
        var nonce: UInt32
    }

    /// After declaring the observed node dead (the ring repaired to its predecessor): probe the run
    /// behind it.
    mutating func startRun(now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        guard let o = observedNode, let me = selfID, runDue == nil else { return }
        run.removeAll(keepingCapacity: true)
        var cur: NodeID? = o.id
        while let id = cur, run.count < Self.maxRun, id != me, id != successorID {
            guard let b = map.brief(id: id), b.state.isMember else { break }
            nonceCounter &+= 1
            run.append(RunMember(address: b.address, id: id, incarnation: b.incarnation, nonce: nonceCounter))
            cur = map.predecessor(of: id)
        }
        guard !run.isEmpty else { return }
        runSince = now
        runDue = now + settings.confirmWindow
        runGraced = false
        runRounds = 0
        // The same k helpers as for a suspect of the run's head. In a ring of fewer than about
        // k + 9 members some of them are in the run too: still helpers, since one that is alive
        // answers its own probe (ending the run there) and relays for the members before it.
        runHelpers = helpers(excluding: run[0].address, map: map)
        stats.runsProbed += 1
        emit(&out, .runProbing(first: run[0].address, members: run.count, helpers: runHelpers.count))
        probeRunRound(now: now, map: map, out: &out)
    }

    mutating func probeRunRound(now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        runRounds += 1
        runNextProbe = now + max(settings.period / 2, TimeSpan(nanos: 1))
        for m in run {
            if send(.probe(requester: selfAddress, nonce: m.nonce), to: m.address, map: map, out: &out) {
                stats.probesSent += 1
            }
            let req = Body.probeRequest(target: m.address, targetIncarnation: m.incarnation, nonce: m.nonce)
            for h in runHelpers where h != m.address && send(req, to: h, map: map, out: &out) {
                stats.probeRequestsSent += 1
            }
        }
    }

    /// `address` answered (or was heard from): it is alive, so the run ends before it.
    mutating func runHeard(_ address: IPAddress, nonce: UInt32? = nil) {
        guard runDue != nil, let i = run.firstIndex(where: { $0.address == address && (nonce == nil || $0.nonce == nonce) })
        else { return }
        run.removeSubrange(i...)
        if run.isEmpty { runDue = nil }
    }

    /// Probe rounds, then the verdict when the window is over.
    mutating func checkRun(now: Instant, map: inout NodeMap, out: inout [DetectorOutput]) {
        guard let due = runDue else { return }
        if now < due {
            if now >= runNextProbe { probeRunRound(now: now, map: map, out: &out) }
            return
        }
        // As for a suspect: our own sockets dropped datagrams since the run began (or δ before).
        if !runGraced, settings.lossGrace > .zero, let loss = lastLocalLoss, loss + settings.timeout >= runSince {
            runGraced = true
            runDue = now + settings.lossGrace
            stats.lossGraces += 1
            emit(&out, .lossGrace(address: run[0].address, grace: settings.lossGrace, lossAgo: now - loss, drops: stats.localDrops))
            return
        }
        let members = run
        run.removeAll(keepingCapacity: true)
        runDue = nil
        var declared = 0
        for m in members {
            guard let n = map[m.address] else { break }
            // Dead or left already (another observer, a notice): on to the next.
            if !n.state.isMember { continue }
            // Alive: a newer life, or any datagram from it since the run began. The run ends here.
            guard n.incarnation == m.incarnation, n.lastHeard < runSince else { break }
            let c = map.setState(n.address, to: .dead, incarnation: m.incarnation)
            guard !c.isEmpty else { break }
            stats.runDeaths += 1
            declared += 1
            publishDeath(
                c, node: n.address, id: n.id, incarnation: m.incarnation,
                event: .declaredDead(
                    address: n.address, id: n.id, incarnation: m.incarnation, lastHeardAgo: now - n.lastHeard,
                    suspectedFor: now - runSince, rounds: runRounds, helpers: runHelpers.count),
                now: now, map: map, out: &out)
        }
        guard declared > 0 else { return }
        refreshRing(map, now: now, out: &out)
        // A full run, all silent: the one behind it may be too.
        if declared == members.count, members.count == Self.maxRun, let o = observedNode, o.suspicion == nil {
            startRun(now: now, map: map, out: &out)
        }
    }
}
