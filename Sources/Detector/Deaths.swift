import Events
import NodeMap
import Wire

/// Declaring a death and spreading it: multicast plus ULFM's binomial-graph broadcast, each node
/// forwarding the first notice of a (node, incarnation) it sees.
extension DetectorCore {
    // MARK: Deaths

    mutating func declareDead(
        _ node: Node, suspicion s: Suspicion, now: Instant, map: inout NodeMap, out: inout [DetectorOutput]
    ) {
        let c = map.setState(node.address, to: .dead, incarnation: s.incarnation)
        observedNode!.suspicion = nil
        guard !c.isEmpty else {
            // The map knows better (a higher incarnation, or it already left): start over.
            observedNode!.deadline = now + settings.timeout
            seenGeneration = map.generation
            emit(&out, .deathRefused(address: node.address, state: map[node.address]?.state ?? node.state))
            return
        }
        publishDeath(
            c, node: node.address, id: node.id, incarnation: s.incarnation,
            event: .declaredDead(
                address: node.address, id: node.id, incarnation: s.incarnation,
                lastHeardAgo: observedNode!.lastHeard.map { now - $0 }, suspectedFor: now - s.since, rounds: s.rounds,
                helpers: s.helpers.count),
            now: now, map: map, out: &out)
        refreshRing(map, now: now, out: &out)
        // The ring moved to the predecessor of the dead node: it may have failed with it.
        startRun(now: now, map: map, out: &out)
    }

    /// What every declared death does once the map took it (`c`): the changes out, the count, the
    /// notice remembered, the event, the multicast and the binomial-graph spread. The ring is the
    /// caller's to refresh (once for a whole run).
    mutating func publishDeath(
        _ c: [NodeMapChange], node address: IPAddress, id: NodeID, incarnation: UInt64, event: DetectorEvent, now: Instant,
        map: NodeMap, out: inout [DetectorOutput]
    ) {
        out.append(.changes(c))
        stats.deathsDeclared += 1
        remember(DeadKey(target: address, incarnation: incarnation))
        emit(&out, event)
        out.append(.multicast(.dead(target: address, targetIncarnation: incarnation, targetID: id.rawValue)))
        spread(DeathNotice(target: address, targetIncarnation: incarnation, targetID: id.rawValue), except: nil, now: now, map: map, out: &out)
    }

    mutating func receiveDead(
        target: IPAddress, incarnation: UInt64, targetID: UInt16, from origin: IPAddress, now: Instant,
        map: inout NodeMap, out: inout [DetectorOutput]
    ) {
        let key = DeadKey(target: target, incarnation: incarnation)
        if target == selfAddress {
            guard !deadSeen.contains(key) else {
                stats.duplicateDeadNotices += 1
                return
            }
            remember(key)
            // Never forward a notice of our own death: refute it.
            if incarnation >= ownIncarnation(map) {
                accused(.dead, by: origin, incarnation: incarnation, now: now, out: &out)
            }
            return
        }
        if let n = map.brief(target) {
            if n.incarnation > incarnation {
                emit(&out, .staleDeathNotice(address: target, incarnation: incarnation, known: n.incarnation))
                return
            }
            // Already dead or left at this incarnation: this node spread it when it learned it (or
            // learned it by a sync or an expiry, while others spread it). The map is the dedupe here,
            // whatever the cache forgot: 5,000 deaths at once overflow a cache of 1,024.
            if !n.state.isMember, n.incarnation >= incarnation {
                stats.duplicateDeadNotices += 1
                return
            }
            let c = map.setState(target, to: .dead, incarnation: incarnation)
            if !c.isEmpty {
                out.append(.changes(c))
                stats.deathsLearned += 1
                if observedNode?.address == target { observedNode!.suspicion = nil }
                emit(&out, .learnedDead(address: target, id: targetID, incarnation: incarnation, from: origin))
                refreshRing(map, now: now, out: &out)
            }
        } else {
            // A node this map never saw (or purged): forwarded once, for those who know it.
            guard !deadSeen.contains(key) else {
                stats.duplicateDeadNotices += 1
                return
            }
            remember(key)
        }
        spread(DeathNotice(target: target, targetIncarnation: incarnation, targetID: targetID), except: origin, now: now, map: map, out: &out)
    }

    /// Sends a death notice to this node's binomial-graph neighbours (but `except`, the node it came
    /// from). A notice goes at once when none went within `deathBatchWindow`; otherwise it waits in
    /// a batch, sent as one `deaths` datagram per neighbour when it is full or the window ends. One
    /// death costs what it did; 5,000 at once (a partition) cost 5,000 / 40 datagrams per neighbour,
    /// not 5,000, and the O(N) neighbour set is computed once per batch, not per death.
    mutating func spread(_ n: DeathNotice, except: IPAddress?, now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        if deathBatch.isEmpty, lastDeathSpread.map({ now >= $0 + Self.deathBatchWindow }) ?? true {
            lastDeathSpread = now
            let notice = Body.dead(target: n.target, targetIncarnation: n.targetIncarnation, targetID: n.targetID)
            for x in bmgNeighbours(in: map) where x != except && send(notice, to: x, map: map, out: &out) {
                stats.deadNoticesSent += 1
            }
            return
        }
        deathBatch.append(n)
        if deathBatch.count >= Wire.deathsPerDatagram {
            flushDeaths(now: now, map: map, out: &out)
        } else if deathBatchDue == nil {
            deathBatchDue = max(now, (lastDeathSpread ?? now) + Self.deathBatchWindow)
        }
    }

    /// Sends the waiting batch of death notices to every binomial-graph neighbour (the node a
    /// notice came from gets it back, and drops it as a duplicate).
    mutating func flushDeaths(now: Instant, map: NodeMap, out: inout [DetectorOutput]) {
        deathBatchDue = nil
        guard !deathBatch.isEmpty else { return }
        lastDeathSpread = now
        let body: Body =
            deathBatch.count == 1
            ? .dead(target: deathBatch[0].target, targetIncarnation: deathBatch[0].targetIncarnation, targetID: deathBatch[0].targetID)
            : .deaths(deathBatch)
        deathBatch.removeAll(keepingCapacity: true)
        for x in bmgNeighbours(in: map) where send(body, to: x, map: map, out: &out) {
            stats.deadNoticesSent += 1
        }
    }

    mutating func remember(_ key: DeadKey) {
        deadSeen.insert(key)
    }

    // MARK: Circulant (binomial) graph

    /// Ranks of the neighbours of `rank` among `count` members in ULFM's binomial graph:
    /// rank ± 2^i (mod count) for i in 0..<ceil(log2 count), without `rank` itself and without repeats.
    /// At most 2·ceil(log2 count) of them; the graph has diameter O(log count) and stays connected
    /// after any ceil(log2 count) − 1 failures.
    public static func bmgNeighbourRanks(of rank: Int, count: Int) -> [Int] {
        guard count > 1, (0..<count).contains(rank) else { return [] }
        var out: [Int] = []
        out.reserveCapacity(2 * ceilLog2(count))
        var step = 1
        while step < count {
            for r in [(rank + step) % count, (rank - step + count) % count] where r != rank && !out.contains(r) {
                out.append(r)
            }
            step <<= 1
        }
        return out
    }

    /// This node's neighbours in the binomial graph over the current members of `map` (dead and left
    /// nodes are not members, so they are skipped). O(N): used only when a death is spread.
    public func bmgNeighbours(in map: NodeMap) -> [IPAddress] {
        guard let me = map.brief(selfAddress), me.state.isMember else { return [] }
        let ids = map.memberIDs()
        var lo = 0
        var hi = ids.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ids[mid] < me.id { lo = mid + 1 } else { hi = mid }
        }
        guard lo < ids.count, ids[lo] == me.id else { return [] }
        return Self.bmgNeighbourRanks(of: lo, count: ids.count).compactMap { map.node(id: ids[$0])?.address }
    }


    // MARK: Helpers

    func ownIncarnation(_ map: NodeMap) -> UInt64 { map.brief(selfAddress)?.incarnation ?? 0 }

    /// Appends a unicast to `to`'s heartbeat port; false (and counted) when the map has no port for it.
    mutating func send(_ body: Body, to: IPAddress, map: NodeMap, out: inout [DetectorOutput]) -> Bool {
        guard to != selfAddress, let port = map.brief(to)?.heartbeatPort, port != 0 else {
            stats.unroutable += 1
            return false
        }
        out.append(.send(body, to: to, port: port))
        return true
    }

    /// Appends `event` when its level is enabled (making the value is cheap; no text is built here).
    func emit(_ out: inout [DetectorOutput], _ event: DetectorEvent) {
        guard event.level >= eventLevel else { return }
        out.append(.event(event))
    }
}
