import Events
import NodeMap
import Wire

/// Heartbeats out, deadlines and suspicion of the observed node in.
extension DetectorCore {
    /// A heartbeat carries the map digest: the receiver compares it with its own (anti-entropy).
    func heartbeatBody(_ map: NodeMap) -> Body {
        .heartbeat(
            sequence: sequence, periodMillis: settings.periodMillis, members: UInt16(clamping: map.digestMembers),
            digest: map.digest)
    }

    mutating func sendHeartbeats(now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        let lateness = now - nextHeartbeat
        if lateness > settings.period / 2, sequence > 0 {
            stats.lateHeartbeats += 1
            emit(&out, .lateHeartbeat(late: lateness, sequence: sequence &+ 1, period: settings.period))
        }
        sequence &+= 1
        let body = heartbeatBody(map)
        if let s = successorAddress, s != selfAddress {
            stats.heartbeatsSent += send(body, to: s, map: map, out: &out) ? 1 : 0
        }
        if !watchers.isEmpty {
            let life = settings.watchLifetime
            watchers.removeAll { now > $0.at + life }
            for w in watchers where w.address != successorAddress {
                stats.heartbeatsSent += send(body, to: w.address, map: map, out: &out) ? 1 : 0
            }
        }
        nextHeartbeat = now + settings.period
    }

    mutating func signOfLife(
        now: Instant, map: inout NodeMap, out: inout [DetectorOutput], reason: DetectorEvent.ClearReason
    ) {
        guard var o = observedNode else { return }
        o.deadline = max(o.deadline, now + settings.timeout)
        o.lastHeard = now
        let s = o.suspicion
        o.suspicion = nil
        observedNode = o
        if let s {
            clearSuspicion(o.address, since: s.since, now: now, map: &map, out: &out, reason: reason)
        }
    }

    mutating func clearSuspicion(
        _ address: IPAddress, since: Instant, now: Instant, map: inout NodeMap, out: inout [DetectorOutput],
        reason: DetectorEvent.ClearReason
    ) {
        stats.refutedSuspicions += 1
        if map.brief(address)?.state == .suspect {
            let c = map.setState(address, to: .alive)
            if !c.isEmpty { out.append(.changes(c)) }
        }
        seenGeneration = map.generation
        emit(&out, .suspicionCleared(address: address, after: now - since, reason: reason))
    }

    mutating func checkObserved(now: Instant, map: inout NodeMap, out: inout [DetectorOutput]) {
        guard var o = observedNode else { return }
        if now >= o.nextWatch {
            // Heartbeats flowing (it holds us as its successor, or still as a watcher): no watch
            // needed, look again in a period. Silent for two periods: ask, and again every refresh.
            if let heard = o.lastHeard, now < heard + settings.period * 2 {
                o.nextWatch = now + settings.period
            } else {
                if send(.watch, to: o.address, map: map, out: &out) { stats.watchesSent += 1 }
                o.nextWatch = now + settings.watchRefresh
            }
            observedNode = o
        }
        guard let node = map[o.address] else { return }
        // Being probed as the head of a run: the run's verdict decides.
        if let due = runDue, run.first?.address == o.address, o.suspicion == nil {
            if o.deadline < due { observedNode!.deadline = due }
            return
        }

        guard var s = o.suspicion else {
            guard now >= o.deadline else { return }
            // An announce (or any datagram the shell touched the node for) also counts.
            let heardBy = node.lastHeard + settings.timeout
            if heardBy > now {
                observedNode!.deadline = heardBy
                return
            }
            suspect(node, now: now, map: &map, out: &out)
            return
        }

        if node.state == .alive || node.incarnation > s.incarnation || node.lastHeard > s.since {
            observedNode!.suspicion = nil
            observedNode!.deadline = now + settings.timeout
            clearSuspicion(
                node.address, since: s.since, now: now, map: &map, out: &out,
                reason: node.lastHeard > s.since
                    ? .heard(ago: now - node.lastHeard) : .mapAlive(incarnation: node.incarnation))
            return
        }
        if now >= s.confirmBy {
            // Our own sockets dropped datagrams since the silence began (δ before the suspicion):
            // the answers may have been among them. One more window, then the verdict.
            if !s.graced, settings.lossGrace > .zero, let loss = lastLocalLoss, loss + settings.timeout >= s.since {
                s.graced = true
                s.confirmBy = now + settings.lossGrace
                observedNode!.suspicion = s
                stats.lossGraces += 1
                emit(&out, .lossGrace(address: node.address, grace: settings.lossGrace, lossAgo: now - loss, drops: stats.localDrops))
            } else {
                declareDead(node, suspicion: s, now: now, map: &map, out: &out)
                return
            }
        }
        if now >= s.nextProbe {
            s.rounds += 1
            s.nextProbe = now + max(settings.period / 2, TimeSpan(nanos: 1))
            observedNode!.suspicion = s
            probeRound(node.address, s, map: map, out: &out)
        }
    }

    mutating func suspect(_ node: Node, now: Instant, map: inout NodeMap, out: inout [DetectorOutput]) {
        let c = map.setState(node.address, to: .suspect, incarnation: node.incarnation)
        if !c.isEmpty { out.append(.changes(c)) }
        seenGeneration = map.generation
        stats.suspicions += 1
        nonceCounter &+= 1
        let s = Suspicion(
            helpers: helpers(excluding: node.address, map: map), confirmBy: now + settings.confirmWindow,
            nextProbe: now + max(settings.period / 2, TimeSpan(nanos: 1)), incarnation: node.incarnation, nonce: nonceCounter,
            since: now, rounds: 1)
        let o = observedNode!
        observedNode!.suspicion = s
        emit(
            &out,
            .suspected(
                address: node.address, id: node.id, incarnation: node.incarnation,
                lastHeardAgo: o.lastHeard.map { now - $0 }, deadlinePassedBy: now - o.deadline,
                observedFor: now - o.since, helpers: s.helpers.count, confirmWindow: settings.confirmWindow))
        _ = send(.suspect(target: node.address, targetIncarnation: node.incarnation), to: node.address, map: map, out: &out)
        probeRound(node.address, s, map: map, out: &out)
    }

    /// `accuser` suspects this node at its own incarnation. A suspicion lives in the accuser's map
    /// alone (it is not spread, and the digest counts a suspect as a member), so a heartbeat to the
    /// accuser disproves it: any datagram from the suspect clears it. A refutation would raise the
    /// incarnation in every map, and each map that lost its announce would then have to repair the
    /// digest by a sync (docs/PROTOCOL.md "Refutation"). A suspicion the heartbeat does not reach
    /// becomes a death notice, and that is refuted.
    mutating func answerSuspicion(of accuser: IPAddress, now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        guard accuser != selfAddress else { return }
        stats.suspicionsAnswered += 1
        answered = Answered(accuser: accuser, at: now)
        if send(heartbeatBody(map), to: accuser, map: map, out: &out) { stats.heartbeatsSent += 1 }
        emit(&out, .suspicionAnswered(by: accuser))
    }

    /// `requester` probes this node (directly or through a helper). A period or more after we
    /// answered its suspicion it is still probing: our datagrams do not reach it (the heartbeat, the
    /// probe answers). Refute once, so the announce tries the multicast path before it declares us dead.
    mutating func stillSuspected(by requester: IPAddress, now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        guard let a = answered, a.accuser == requester else { return }
        if now > a.at + settings.confirmWindow {
            answered = nil
        } else if now >= a.at + settings.period {
            answered = nil
            accused(.suspect, by: requester, incarnation: ownIncarnation(map), now: now, out: &out)
        }
    }

    /// This node was accused at `incarnation`: refute past it.
    mutating func accused(
        _ accusation: DetectorEvent.Accusation, by: IPAddress, incarnation: UInt64, now: Instant,
        out: inout [DetectorOutput]
    ) {
        stats.refutations += 1
        out.append(.refute(accusation, by: by, past: incarnation))
    }
}
