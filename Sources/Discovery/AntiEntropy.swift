import NodeMap
import Wire

/// The last digest a heartbeat origin sent, and this node's digest when it came.
struct PeerDigest: Sendable {
    var digest: UInt64
    var mine: UInt64
}

/// A sync this node started.
struct SyncSession: Sendable {
    var peer: IPAddress
    var id: UInt32
    var started: Instant
    var pull: Bool
}

/// Anti-entropy, bounded joins and the re-announce wave (docs/PROTOCOL.md "Anti-entropy").
///
/// - Every heartbeat carries the sender's map digest. A receiver whose own digest differs, as it
///   did at the previous heartbeat from that sender (so it is not a change still in flight), sends
///   a `syncRequest` with its 1,024 bucket sums folded to a byte each. The sender
///   answers with its entries (members and tombstones) of the buckets that differ, at most
///   `syncReplyDatagrams` datagrams; the requester merges them and pushes back its own entries of
///   the covered buckets where the two maps still differ. Each node is compared with its ring
///   predecessor, so a lost join, announce, leave or death notice is repaired within a few periods.
/// - A join is answered with the whole map only while the map is tiny (≤ 3 members). Otherwise a
///   settled ring neighbour sends a small `offer`, and the newcomer pulls the map (by syncs) from the
///   first offerer only: one transfer per newcomer, however many nodes heard the join.
/// - Many joins at once (a restart storm) make an influx: nobody offers and nobody pulls; when the
///   joins stop, every node announces `waveCopies` times, and anti-entropy repairs what those lost.
extension DiscoveryCore {
    /// How long a dead or left node is remembered: long enough that no live map still holds it as a
    /// member (a member entry older than this, for a node this map does not hold, is not taken).
    public func tombstoneLifetime(_ map: NodeMap) -> TimeSpan {
        max(settings.purgeAfter, interval(members: map.memberCount) * 3)
    }

    // MARK: Influx and wave

    mutating func noteJoin(now: Instant, memberCount: Int) {
        let half = influxWindow / UInt64(2)
        if now >= joinWindowStart + half {
            joinsBefore = now >= joinWindowStart + influxWindow ? 0 : joinsNow
            joinsNow = 0
            joinWindowStart = now
        }
        joinsNow += 1
        lastJoinAt = now
        if inInflux(now: now, memberCount: memberCount) { influxPending = true }
    }

    /// Whether many nodes are joining at once (a restart storm), from the one figure of the map it
    /// reads (a caller holding the map `inout` would otherwise hand over a copy of it). Inlined: called from a mutating method (`noteJoin`,
    /// `noteNews`: every join and news of a restart storm), a non-mutating method of this struct
    /// (over 700 bytes) was handed a copy of all of it.
    @inline(__always)
    func inInflux(now: Instant, memberCount: Int) -> Bool {
        let recent: Int
        if now >= joinWindowStart + influxWindow {
            recent = 0
        } else if now >= joinWindowStart + influxWindow / UInt64(2) {
            recent = joinsNow
        } else {
            recent = joinsNow + joinsBefore
        }
        return recent >= max(influxMinJoins, memberCount / max(influxDivisor, 1))
    }

    /// Announces of nodes this map does not hold as members (unknown, or held dead or left): many of
    /// them at once is a partition healing (or a restart after a long one). Then every node that sees
    /// it announces at once, at a new incarnation, so that maps holding it dead take it back without
    /// a revival round trip.
    ///
    /// Takes the map's member count, not the map: `receive` holds the map `inout`, and handing it
    /// over copied it (168 bytes) for every news of a restart storm.
    mutating func noteNews(now: Instant, memberCount: Int) {
        // During a restart storm announces of unknown nodes are the storm itself: its wave serves.
        // A newcomer still pulling lacks most nodes: their announces are not a partition healing.
        guard !influxPending, !pullActive, !inInflux(now: now, memberCount: memberCount) else { return }
        if now >= newsWindowStart + influxWindow {
            newsCount = 0
            newsWindowStart = now
        }
        newsCount += 1
        guard newsCount >= influxMinJoins else { return }
        newsCount = 0
        if scheduleWave(now: now, memberCount: memberCount) {
            waveBump = true
            stats.healWaves += 1
        }
    }

    @discardableResult
    mutating func scheduleWave(now: Instant, memberCount: Int) -> Bool {
        guard settings.waveCopies > 0, waveNext == nil, lastWave.map({ now >= $0 + settings.waveGap }) ?? true else { return false }
        lastWave = now
        // Spread over about 50 us per member (10,000 nodes: 0.5 s, so that a receiver gets 20,000
        // announces a second, not all at once), at least 100 ms between copies.
        let spread = max(.milliseconds(100), min(settings.waveSpread, .nanoseconds(50_000 * UInt64(memberCount))))
        let first = now + TimeSpan(nanos: UInt64.random(in: 0..<spread.nanos, using: &rng))
        waveNext = first
        waveLeft = settings.waveCopies - 1
        waveStep = spread
        // Every node that saw the influx drew its first copy in the same [0, spread): the last copy
        // of any of them is out by now + copies × spread.
        wavesEndAt = now + spread * UInt64(settings.waveCopies)
        return true
    }

    mutating func waveTick(now: Instant, map: inout NodeMap, out: inout [DiscoveryOutput]) {
        if influxPending, now >= lastJoinAt + influxQuiet {
            influxPending = false
            scheduleWave(now: now, memberCount: map.memberCount)
        }
        while let due = waveNext, due <= now {
            if waveLeft > 0 {
                waveNext = due + waveStep
                waveLeft -= 1
            } else {
                waveNext = nil
            }
            if waveBump {
                waveBump = false
                if incarnation < .max { incarnation += 1 }
                let c = map.observe(selfClaim, now: now)
                if !c.isEmpty { out.append(.changes(c)) }
            }
            out.append(.multicast(.announce(info(map))))
            stats.announcesSent += 1
            stats.waveAnnounces += 1
        }
    }

    // MARK: Joins

    /// Whether this node answers a revival of `node` (an announce our map will not take): while the
    /// map is tiny, or when we are its ring neighbour (as if it were a member): two answers per
    /// announce, not one from every node that holds it dead (a healed partition of 5,000 nodes).
    func responsible(for node: NodeBrief, map: NodeMap) -> Bool {
        if map.memberCount <= 3 { return true }
        guard let mine = map.brief(me.address) else { return false }
        return map.successor(of: node.id) == mine.id || map.predecessor(of: node.id) == mine.id
    }

    /// A tiny map answers with itself (one datagram); a settled ring neighbour of the newcomer offers.
    /// Map entries carry no capabilities (an RDMA endpoint), so a newcomer that learns the answerer
    /// from them could reach it only by IP until the answerer's next announce (up to 1.5 announce
    /// intervals): where IP is blocked, its heartbeats failed meanwhile. An answerer with
    /// capabilities therefore also sends the newcomer its announce, by unicast.
    ///
    /// `map` is `inout` only so that it is passed by address: every node receives every join, and a
    /// map passed by value is copied (168 bytes) for the call, though most calls read one count.
    mutating func answerJoin(of newcomer: IPAddress, now: Instant, map: inout NodeMap, out: inout [DiscoveryOutput]) {
        if map.memberCount <= 3 {
            for body in mapSync(map, now: now) { out.append(.unicast(body, to: newcomer)) }
            stats.syncsSent += 1
            introduce(to: newcomer, map: map, out: &out)
            return
        }
        guard !inInflux(now: now, memberCount: map.memberCount), waveNext == nil, !pullActive,
            let n = map.brief(newcomer), let mine = map.brief(me.address),
            map.successor(of: n.id) == mine.id || map.predecessor(of: n.id) == mine.id,
            takeToken(now: now)
        else { return }
        out.append(.unicast(.offer(members: UInt16(clamping: map.digestMembers), digest: map.digest), to: newcomer))
        stats.offersSent += 1
        introduce(to: newcomer, map: map, out: &out)
    }

    /// Our announce to `newcomer` alone, when we have capabilities to tell (see `answerJoin`).
    mutating func introduce(to newcomer: IPAddress, map: NodeMap, out: inout [DiscoveryOutput]) {
        guard !me.capabilities.isEmpty else { return }
        out.append(.unicast(.announce(info(map)), to: newcomer))
        stats.introductionsSent += 1
    }

    /// A newcomer pulls from the first offerer (offers are sent only outside an influx), unless a
    /// later offer holds more than twice the members the first did: the first came from a node that
    /// had itself just (re)started and had not yet learned the map (several nodes restarting
    /// together). Each switch at least doubles the count, so a newcomer pulls at most
    /// log2(65,535) + 1 = 17 times however many offers come.
    mutating func offered(by peer: IPAddress, members: Int, digest: UInt64, now: Instant, map: NodeMap, out: inout [DiscoveryOutput]) {
        guard digest != map.digest, peer != pulledFrom else { return }
        if pulledFrom != nil {
            guard members > 2 * pulledMembers else { return }
            // Give up the session with the smaller source: its later datagrams are still merged.
            retireSession()
        }
        if !pullActive { pullEndsBy = now + settings.pullLimit }
        pullMisses = 0
        pulledFrom = peer
        pulledMembers = members
        pullActive = true
        stats.pulls += 1
        startSession(with: peer, pull: true, now: now, map: map, out: &out)
    }

    /// A pull page whose request or last datagram was lost is asked again; the pull ends at its
    /// last page or at `pullLimit`.
    mutating func pullTick(now: Instant, map: NodeMap, out: inout [DiscoveryOutput]) {
        guard pullActive, let peer = pulledFrom else { return }
        guard now < pullEndsBy else {
            pullActive = false
            return
        }
        if let s = session, now < s.started + timeout(of: s) { return }
        guard pullMisses < settings.pullMisses else {
            pullActive = false
            return
        }
        pullMisses += 1
        startSession(with: peer, pull: true, now: now, map: map, out: &out)
    }

    /// How long a session waits for its last datagram.
    func timeout(of s: SyncSession) -> TimeSpan { s.pull ? pullRetry : settings.syncTimeout }

    // MARK: Digests on heartbeats

    /// A heartbeat from `origin` carried its map digest.
    public mutating func heardDigest(
        from origin: IPAddress, members: UInt16, digest: UInt64, now: Instant, map: NodeMap
    ) -> [DiscoveryOutput] {
        guard started else { return [] }
        let mine = map.digest
        let previous = peerDigests[origin]
        if previous == nil, peerDigests.count >= 64 { peerDigests.removeAll(keepingCapacity: true) }
        peerDigests[origin] = PeerDigest(digest: digest, mine: mine)
        // Start only when the maps differed at the previous heartbeat too: a change still in
        // flight (a multicast a moment behind the heartbeat) is not a divergence.
        // And not while both maps are still moving (a wave of announces sweeping over them), nor
        // while joins pour in or their wave is under way: those fill most gaps by themselves.
        guard digest != mine, let previous, previous.digest != previous.mine,
            previous.digest == digest || previous.mine == mine, !influxPending, waveNext == nil, now >= wavesEndAt, !pullActive
        else { return [] }
        var out: [DiscoveryOutput] = []
        startSession(with: origin, pull: false, now: now, map: map, out: &out)
        return out
    }

    mutating func startSession(with peer: IPAddress, pull: Bool, now: Instant, map: NodeMap, out: inout [DiscoveryOutput]) {
        if let s = session, now < s.started + timeout(of: s) { return }
        retireSession()
        sessionCounter &+= 1
        let salt = UInt32.random(in: 0...UInt32.max, using: &rng)
        session = SyncSession(peer: peer, id: sessionCounter, started: now, pull: pull)
        stats.syncRequestsSent += 1
        out.append(
            .unicast(
                .syncRequest(SyncRequest(session: sessionCounter, salt: salt, flags: pull ? .pull : [], sums: map.saltedBucketSums(salt: salt))),
                to: peer))
    }

    /// Ends the current session, if any; its late datagrams are still taken for a while (the last
    /// four sessions are remembered).
    mutating func retireSession() {
        guard let s = session else { return }
        if recentSessions.count >= 4 { recentSessions.removeFirst() }
        recentSessions.append(s)
        session = nil
    }

    mutating func takeToken(now: Instant) -> Bool {
        let rate = settings.syncAnswerRate
        if now > tokensAt {
            answerTokens = min(rate, answerTokens + Double((now - tokensAt).nanos) / 1e9 * rate)
            tokensAt = now
        }
        guard answerTokens >= 1 else { return false }
        answerTokens -= 1
        return true
    }

    // MARK: Answering

    /// Our entries of the buckets whose folded sums differ from the requester's, whole buckets per
    /// datagram, starting at a bucket the salt picks, at most `syncReplyDatagrams` datagrams.
    mutating func answerSync(_ r: SyncRequest, from peer: IPAddress, now: Instant, map: NodeMap, out: inout [DiscoveryOutput]) {
        guard r.sums.count == NodeMap.digestBuckets, peer != me.address else { return }
        // Only members are answered: an answer is many times the request's size, and a forged
        // source address must not turn this node into an amplifier aimed at a stranger.
        guard map.brief(peer)?.state.isMember == true else {
            stats.syncUnsolicited += 1
            return
        }
        guard takeToken(now: now) else {
            stats.syncRequestsRefused += 1
            return
        }
        stats.syncRequestsAnswered += 1
        if answered[peer] == nil, answered.count >= 64 { answered.removeAll(keepingCapacity: true) }
        answered[peer] = r.session
        let buckets = NodeMap.digestBuckets
        var differ = [Bool](repeating: false, count: buckets)
        var any = false
        for k in 0..<buckets where NodeMap.salted(map.bucketSum(k), salt: r.salt) != r.sums[k] {
            differ[k] = true
            any = true
        }
        var byBucket: [[Node]] = []
        if any {
            byBucket = [[Node]](repeating: [], count: buckets)
            for n in map.nodes(inBuckets: { differ[$0] }) { byBucket[NodeMap.digestBucket(n.address)].append(n) }
        }
        let start = Int(r.salt % UInt32(buckets))
        let order = (0..<buckets).lazy.map { (start + $0) % buckets }.filter { differ[$0] }
        let bodies = pack(order, byBucket, now: now, limit: settings.syncReplyDatagrams, session: r.session, reply: true)
        for b in bodies { out.append(.unicast(b, to: peer)) }
        stats.syncEntriesSent += bodies.count
    }

    /// Packs the entries of `order`'s buckets into `syncEntries` bodies of at most one datagram each.
    /// A bucket too large for one datagram is sent cut and not listed as covered.
    func pack<S: Sequence>(
        _ order: S, _ byBucket: [[Node]], now: Instant, limit: Int, session: UInt32, reply: Bool
    ) -> [Body] where S.Element == Int {
        let room = Message.syncEntriesCapacity - SyncEntries.fixedSize
        var bodies: [SyncEntries] = []
        var cur = SyncEntries(session: session, flags: reply ? .reply : [], covered: [], entries: [])
        var used = 0
        var cut = false
        for k in order {
            let entries = byBucket.isEmpty ? [] : byBucket[k].map { SyncEntry($0, now: now) }
            let size = 2 + entries.reduce(0) { $0 + $1.encodedSize }
            if used + size > room, !(cur.covered.isEmpty && cur.entries.isEmpty) {
                bodies.append(cur)
                if bodies.count >= limit {
                    cut = true
                    break
                }
                cur = SyncEntries(session: session, flags: reply ? .reply : [], covered: [], entries: [])
                used = 0
            }
            if size > room {
                // Larger than a datagram (about 30 entries: only in maps of tens of thousands).
                var u = 0
                for e in entries where u + e.encodedSize <= room {
                    cur.entries.append(e)
                    u += e.encodedSize
                }
                used = room
                continue
            }
            cur.covered.append(UInt16(k))
            cur.entries += entries
            used += size
        }
        if !cut, !(cur.covered.isEmpty && cur.entries.isEmpty) || bodies.isEmpty { bodies.append(cur) }
        if reply, !bodies.isEmpty {
            bodies[bodies.count - 1].flags.insert(.last)
            if cut { bodies[bodies.count - 1].flags.insert(.more) }
        }
        return bodies.map { .syncEntries($0) }
    }

    // MARK: Receiving entries

    mutating func receiveEntries(_ e: SyncEntries, from peer: IPAddress, now: Instant, map: inout NodeMap, out: inout [DiscoveryOutput]) {
        if e.flags.contains(.reply) {
            // Datagrams of one answer may arrive out of order: those of a session that already
            // ended (its last datagram came first) are still taken, for a while.
            let current = session.map { $0.peer == peer && $0.id == e.session } ?? false
            guard current || recentSessions.contains(where: { $0.peer == peer && $0.id == e.session && now < $0.started + settings.syncTimeout * 2 })
            else {
                stats.syncUnsolicited += 1
                return
            }
            if current, session?.pull == true { pullMisses = 0 }
            merge(e.entries, from: peer, now: now, map: &map, out: &out)
            pushBack(e, to: peer, now: now, map: map, out: &out)
            if current, let s = session, e.flags.contains(.last) {
                retireSession()
                if e.flags.contains(.more) {
                    startSession(with: peer, pull: s.pull, now: now, map: map, out: &out)
                } else if s.pull {
                    pullActive = false
                }
            }
        } else {
            // A push: the requester's entries for buckets of a session we answered.
            guard answered[peer] == e.session else {
                stats.syncUnsolicited += 1
                return
            }
            merge(e.entries, from: peer, now: now, map: &map, out: &out)
        }
    }

    /// After merging an answer: our entries of each covered bucket whose sum still differs from the
    /// answer's (we hold something it lacks, or newer).
    mutating func pushBack(_ e: SyncEntries, to peer: IPAddress, now: Instant, map: NodeMap, out: inout [DiscoveryOutput]) {
        guard !e.covered.isEmpty else { return }
        var theirs: [Int: UInt64] = [:]
        for x in e.entries where x.state.isMember {
            theirs[NodeMap.digestBucket(x.address), default: 0] &+= NodeMap.digestTerm(x.address, incarnation: x.incarnation)
        }
        var differ: [Int] = []
        for k in e.covered where map.bucketSum(Int(k)) != theirs[Int(k)] ?? 0 { differ.append(Int(k)) }
        guard !differ.isEmpty else { return }
        let wanted = Set(differ)
        var byBucket = [[Node]](repeating: [], count: NodeMap.digestBuckets)
        for n in map.nodes(inBuckets: { wanted.contains($0) }) { byBucket[NodeMap.digestBucket(n.address)].append(n) }
        let bodies = pack(differ, byBucket, now: now, limit: settings.syncPushDatagrams, session: e.session, reply: false)
        for b in bodies { out.append(.unicast(b, to: peer)) }
        stats.syncEntriesSent += bodies.count
    }

    /// Takes what the entries know better: a member at a higher incarnation (a node we lack, unless
    /// its entry is older than a tombstone lives: a node the others may have purged), a death or
    /// leave at our incarnation or above. An entry that holds us dead or left makes us refute.
    mutating func merge(_ entries: [SyncEntry], from sender: IPAddress, now: Instant, map: inout NodeMap, out: inout [DiscoveryOutput]) {
        var changes: [NodeMapChange] = []
        let senderHops = Int(map.brief(sender)?.hops ?? 0)
        let lifetime = tombstoneLifetime(map)
        for e in entries {
            if e.address == me.address {
                if !e.state.isMember, e.incarnation >= incarnation {
                    out.append(.refute(accusedAs: e.state, by: sender, past: e.incarnation))
                }
                continue
            }
            let known = map.brief(e.address)
            let before = changes.count
            if e.state.isMember {
                if let known {
                    guard e.incarnation > known.incarnation else { continue }
                } else {
                    guard UInt64(e.ageMillis) * 1_000_000 <= lifetime.nanos else { continue }
                }
                let claim = NodeClaim(
                    address: e.address, preferredID: e.explicitID ? NodeID(rawValue: e.preferredID) : nil,
                    explicitID: e.explicitID, aliases: e.aliases, incarnation: e.incarnation,
                    hops: UInt8(clamping: Int(e.hops) + senderHops), heartbeatPort: e.heartbeatPort)
                changes += map.observe(claim, now: now - .milliseconds(UInt64(e.ageMillis)))
            } else if let known, known.state.isMember, e.incarnation >= known.incarnation {
                changes += map.setState(e.address, to: e.state, incarnation: e.incarnation)
            }
            if changes.count > before { stats.syncEntriesMerged += 1 }
        }
        if !changes.isEmpty { out.append(.changes(changes)) }
    }
}
