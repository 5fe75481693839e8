import Events
import NodeMap
import Wire

/// Confirming a suspicion: direct probes of the suspect and indirect ones through k helpers
/// (SWIM / Lifeguard), and the helper side that relays the suspect's answer back.
extension DetectorCore {
    mutating func probeRound(_ target: IPAddress, _ s: Suspicion, map: NodeMap, out: inout [DetectorOutput]) {
        if send(.probe(requester: selfAddress, nonce: s.nonce), to: target, map: map, out: &out) {
            stats.probesSent += 1
        }
        let req = Body.probeRequest(target: target, targetIncarnation: s.incarnation, nonce: s.nonce)
        for h in s.helpers where send(req, to: h, map: map, out: &out) {
            stats.probeRequestsSent += 1
        }
    }

    /// The k members after this node on the ring, skipping `target`: deterministic, and (being near
    /// on the ring) likely on the same switch but not behind the same failed link as the target.
    func helpers(excluding target: IPAddress, map: NodeMap) -> [IPAddress] {
        let k = settings.confirmations
        guard k > 0, let me = selfID else { return [] }
        var out: [IPAddress] = []
        var cur = me
        var steps = 0
        while out.count < k, steps <= k {
            guard let next = map.successor(of: cur), next != me else { break }
            cur = next
            steps += 1
            if let n = map.node(id: next), n.address != target, n.address != selfAddress { out.append(n.address) }
        }
        return out
    }

    mutating func answerProbe(nonce: UInt32, to origin: IPAddress, map: NodeMap, out: inout [DetectorOutput]) {
        let ack = Body.probeAck(target: selfAddress, targetIncarnation: ownIncarnation(map), nonce: nonce)
        if send(ack, to: origin, map: map, out: &out) { stats.probeAcksSent += 1 }
    }

    /// Helper side: `requester` asks us to probe `target`. One relay entry per (target, nonce,
    /// requester): a later round of the same suspicion refreshes it, so the answer goes back once.
    mutating func helperProbe(
        target: IPAddress, nonce: UInt32, requester: IPAddress, now: Instant, map: NodeMap, out: inout [DetectorOutput]
    ) {
        if target == selfAddress {
            answerProbe(nonce: nonce, to: requester, map: map, out: &out)
            return
        }
        let expires = now + settings.confirmWindow
        if let i = relays.firstIndex(where: { $0.target == target && $0.nonce == nonce && $0.requester == requester }) {
            relays[i].expires = expires
        } else {
            if relays.count >= Self.maxRelays {
                relays.removeAll { $0.expires < now }
                if relays.count >= Self.maxRelays { relays.removeFirst() }
            }
            relays.append(Relay(target: target, nonce: nonce, requester: requester, expires: expires))
        }
        if send(.probe(requester: requester, nonce: nonce), to: target, map: map, out: &out) {
            stats.probesRelayed += 1
        }
    }

    /// A probe answer: clears our suspicion if it is the one we probe, and is forwarded once to each
    /// requester we probed it for.
    mutating func probeAnswered(
        target: IPAddress, targetIncarnation: UInt64, nonce: UInt32, from origin: IPAddress, body: Body, now: Instant,
        map: inout NodeMap, out: inout [DetectorOutput]
    ) {
        if runDue != nil { runHeard(target, nonce: nonce) }
        if let o = observedNode, o.address == target, let s = o.suspicion, s.nonce == nonce,
            targetIncarnation >= s.incarnation
        {
            signOfLife(now: now, map: &map, out: &out, reason: .probeAnswered(via: origin == target ? nil : origin))
        }
        var i = 0
        while i < relays.count {
            let r = relays[i]
            guard r.target == target, r.nonce == nonce else {
                i += 1
                continue
            }
            if r.expires >= now, r.requester != selfAddress, send(body, to: r.requester, map: map, out: &out) {
                stats.probeAcksRelayed += 1
                emit(&out, .probeAnswerForwarded(target: target, nonce: nonce, to: r.requester))
            }
            relays.remove(at: i)
        }
    }
}
