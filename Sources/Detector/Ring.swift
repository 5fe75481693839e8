import Events
import NodeMap
import Wire

/// Who observes whom: members ordered by ID form a ring; this node observes its predecessor and
/// sends heartbeats to its successor.
extension DetectorCore {
    /// Catch up with map changes the shell made, and clear suspects the ring moved away from.
    mutating func prepare(_ map: inout NodeMap, now: Instant, out: inout [DetectorOutput]) {
        if seenGeneration != map.generation { refreshRing(map, now: now, out: &out) }
        if !orphans.isEmpty {
            for a in orphans where map.brief(a)?.state == .suspect {
                let c = map.setState(a, to: .alive)
                if !c.isEmpty {
                    out.append(.changes(c))
                    emit(&out, .suspicionCleared(address: a, after: .zero, reason: .noLongerObserved))
                }
            }
            orphans.removeAll()
            seenGeneration = map.generation
        }
    }

    mutating func refreshRing(_ map: NodeMap, now: Instant, out: inout [DetectorOutput]) {
        seenGeneration = map.generation
        seenChangeTotal = map.changeTotal
        guard let me = map.brief(selfAddress), me.state.isMember else {
            if let o = observedNode {
                emit(&out, .stoppedObserving(address: o.address, notMember: true))
                if o.suspicion != nil { orphans.append(o.address) }
            }
            selfID = nil
            observedNode = nil
            successorAddress = nil
            successorID = nil
            run.removeAll()
            runDue = nil
            return
        }
        selfID = me.id
        successorID = map.successor(of: me.id)
        successorAddress = successorID.flatMap { map.brief(id: $0)?.address }
        let pred = map.predecessor(of: me.id).flatMap { map.brief(id: $0) }

        if var o = observedNode, let p = pred, p.address == o.address {
            o.id = p.id
            // A higher incarnation (announce after a refutation) brought the suspect back in the map.
            if let s = o.suspicion, p.state == .alive || p.incarnation > s.incarnation {
                o.suspicion = nil
                o.deadline = now + settings.timeout
                stats.refutedSuspicions += 1
                emit(&out, .suspicionCleared(address: p.address, after: now - s.since, reason: .mapAlive(incarnation: p.incarnation)))
            }
            observedNode = o
            return
        }

        // The predecessor changed. The old one left the ring (death, leave, removal): ring repair, the
        // new predecessor has been heartbeating someone all along, so no slack. The old one is still a
        // member: a new node came in between (or IDs moved): startup slack.
        let old = observedNode
        let repair: Bool
        if let o = old {
            let stillMember = map.brief(o.address)?.state.isMember ?? false
            repair = !stillMember
            if stillMember, o.suspicion != nil { orphans.append(o.address) }
        } else {
            repair = false
        }
        guard let p = pred else {
            if let o = old { emit(&out, .stoppedObserving(address: o.address, notMember: false)) }
            observedNode = nil
            return
        }
        stats.ringChanges += 1
        let grace = repair ? settings.timeout : settings.startupGrace(memberCount: map.memberCount)
        observedNode = Observed(
            address: p.address, id: p.id, deadline: now + grace, nextWatch: now + settings.period, suspicion: nil,
            since: now, lastHeard: nil)
        // The first watch waits one period: a predecessor that already holds us as its successor
        // heartbeats us within it, and needs none (a restart storm changes rings many times).
        let reason: DetectorEvent.ObserveReason =
            old.map { repair ? .ringRepair(left: $0.address) : .newPredecessor(was: $0.address) } ?? .start
        emit(&out, .observing(address: p.address, id: p.id, reason: reason, grace: grace, members: map.memberCount))
    }
}
