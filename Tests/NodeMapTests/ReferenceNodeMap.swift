@testable import NodeMap

// The node map as it was before its storage became columns (struct of arrays) with open-addressing
// tables: kept verbatim (renamed) so that NodeMapDifferentialTests can feed both the same random
// operations and compare every answer. Do not change its behaviour.

/// The cluster's node map: who is there, under which ID, in which state.
///
/// Pure and deterministic: no I/O, no clock. Time (`now`) is passed in by the caller in
/// nanoseconds of "map time"; `timeBaseUnixNanos` says which wall-clock instant map time 0 was,
/// so that readers of the map file can show ages.
///
/// IDs are assigned by a pure function of the set of claims in the map (see `docs/NODEMAP.md`):
/// every node holding the same claims holds the same assignment, whatever order they arrived in.
struct ReferenceNodeMap: Sendable {
    private(set) var generation: UInt64 = 0
    var timeBaseUnixNanos: Int64 = 0

    private var storage: [Node] = []
    private var index: [IPAddress: Int32] = [:]
    /// Assigned ID → slot in `storage`.
    private var owner: [UInt16: Int32] = [:]
    /// Preferred IDs with two or more claimants → their addresses, best rank first.
    private var contested: [UInt16: [IPAddress]] = [:]
    /// Nodes that hold a substitute ID, sorted by address.
    private var losers: [IPAddress] = []
    /// Bitmap of IDs whose node is a member (alive or suspect): the detector's ring.
    private var memberBits: [UInt64] = []
    private(set) var memberCount = 0
    /// Claims of new nodes refused because every ID is taken (65535 nodes): counted, never a trap.
    private(set) var refusedFull = 0
    /// Losers whose substitute ID was (re)computed by probing: the cost of the ID assignment.
    private(set) var loserProbes = 0
    /// The most nodes a map holds: one per ID.
    static let capacity = 65535

    /// Anti-entropy digest (docs/PROTOCOL.md "Anti-entropy"): the sum mod 2^64 of `digestTerm` over
    /// members (alive or suspect). Independent of arrival order, updated in O(1) per change; dead,
    /// left and removed nodes drop out, so a map that purged X equals one that holds X dead.
    private(set) var digest: UInt64 = 0
    /// Members counted by state (alive or suspect), whether or not they hold an ID.
    private(set) var digestMembers = 0
    /// The digest split by `digestBucket` of the address (allocated with the first member).
    private var bucketSums: [UInt64] = []
    /// Buckets of the digest: a sync compares them to find which entries differ.
    static let digestBuckets = 1024

    init(timeBaseUnixNanos: Int64 = 0) {
        self.timeBaseUnixNanos = timeBaseUnixNanos
    }

    // MARK: Reading

    var count: Int { storage.count }
    var isEmpty: Bool { storage.isEmpty }
    /// All nodes, in no particular order.
    var nodes: [Node] { storage }
    subscript(address: IPAddress) -> Node? { index[address].map { storage[Int($0)] } }
    func node(id: NodeID) -> Node? { owner[id.rawValue].map { storage[Int($0)] } }
    /// The scalar fields of the node with `address`, read without copying its aliases and
    /// capabilities: for the paths that look a node up for every datagram (a `Node` copy retains two
    /// arrays; in a 2,000-node simulator run those retains were 13 % of the time).
    func brief(_ address: IPAddress) -> NodeBrief? {
        guard let slot = index[address] else { return nil }
        return NodeBrief(storage[Int(slot)])
    }
    /// `brief` for the node that holds `id`.
    func brief(id: NodeID) -> NodeBrief? {
        guard let slot = owner[id.rawValue] else { return nil }
        return NodeBrief(storage[Int(slot)])
    }
    func contains(_ address: IPAddress) -> Bool { index[address] != nil }
    /// All nodes ordered by assigned ID.
    func sortedByID() -> [Node] { storage.sorted { $0.id < $1.id } }
    /// Addresses of nodes that currently hold a substitute ID.
    var collisionLosers: [IPAddress] { losers }

    /// Finds the node that has `address` as its primary address or as one of its aliases.
    func node(anyAddress address: IPAddress) -> Node? {
        if let n = self[address] { return n }
        return storage.first { $0.aliases.contains { $0.address == address } }
    }

    // MARK: Digest

    /// A fixed 64-bit hash of an address (the same on every node and every run).
        static func addressHash(_ a: IPAddress) -> UInt64 {
        mix64(a.hi &* 0x9E37_79B9_7F4A_7C15 ^ a.lo)
    }

        static func mix64(_ v: UInt64) -> UInt64 {
        var x = v
        x ^= x >> 30
        x &*= 0xBF58_476D_1CE4_E5B9
        x ^= x >> 27
        x &*= 0x94D0_49BB_1331_11EB
        x ^= x >> 31
        return x
    }

    /// The digest bucket of an address: the top 10 bits of its hash.
        static func digestBucket(_ a: IPAddress) -> Int { Int(addressHash(a) >> 54) }

    /// A member's term of the digest.
        static func digestTerm(_ a: IPAddress, incarnation: UInt64) -> UInt64 {
        mix64(addressHash(a) ^ (incarnation &+ 1) &* 0xD6E8_FEB8_6659_FD93)
    }

    /// The sum of `digestTerm` over the members in bucket `k`.
    func bucketSum(_ k: Int) -> UInt64 { bucketSums.isEmpty ? 0 : bucketSums[k] }

    /// Every bucket sum folded to one byte with `salt` (a new salt per sync session, so that two
    /// different sums that fold to the same byte do not hide a difference twice in a row).
    func saltedBucketSums(salt: UInt32) -> [UInt8] {
        (0..<Self.digestBuckets).map { Self.salted(bucketSum($0), salt: salt) }
    }

        static func salted(_ sum: UInt64, salt: UInt32) -> UInt8 {
        UInt8(truncatingIfNeeded: mix64(sum ^ UInt64(salt) &* 0xA24B_AED4_963E_E407) >> 56)
    }

    /// The nodes (members and tombstones) whose address falls in a bucket `wanted` says yes to.
    func nodes(inBuckets wanted: (Int) -> Bool) -> [Node] {
        storage.filter { wanted(Self.digestBucket($0.address)) }
    }

    private mutating func account(_ a: IPAddress, incarnation: UInt64, member: Bool, adding: Bool) {
        guard member else { return }
        if bucketSums.isEmpty { bucketSums = [UInt64](repeating: 0, count: Self.digestBuckets) }
        let t = Self.digestTerm(a, incarnation: incarnation)
        let k = Self.digestBucket(a)
        if adding {
            bucketSums[k] &+= t
            digest &+= t
            digestMembers += 1
        } else {
            bucketSums[k] &-= t
            digest &-= t
            digestMembers -= 1
        }
    }

    // MARK: Ring (members ordered by ID)

    func isMember(_ id: NodeID) -> Bool {
        let w = Int(id.rawValue) >> 6
        return w < memberBits.count && memberBits[w] & (1 << UInt64(id.rawValue & 63)) != 0
    }

    /// The next member after `id` on the ring (wrapping), excluding `id` itself; nil if there is none.
    func successor(of id: NodeID) -> NodeID? {
        guard !memberBits.isEmpty else { return nil }
        var v = Int(id.rawValue)
        for _ in 0..<2 {
            // scan forward from v+1 to 65535, then wrap
            var i = v + 1
            while i <= 65535 {
                let w = i >> 6
                let bits = memberBits[w] >> UInt64(i & 63)
                if bits != 0 {
                    let found = i + bits.trailingZeroBitCount
                    return found == Int(id.rawValue) ? nil : NodeID(found)
                }
                i = (w + 1) << 6
            }
            v = 0
        }
        return nil
    }

    /// The member before `id` on the ring (wrapping), excluding `id` itself; nil if there is none.
    func predecessor(of id: NodeID) -> NodeID? {
        guard !memberBits.isEmpty else { return nil }
        var v = Int(id.rawValue)
        for _ in 0..<2 {
            var i = v - 1
            while i >= 1 {
                let w = i >> 6
                let shift = 63 - UInt64(i & 63)
                let bits = memberBits[w] << shift
                if bits != 0 {
                    let found = i - bits.leadingZeroBitCount
                    return found == Int(id.rawValue) ? nil : NodeID(found)
                }
                i = (w << 6) - 1
            }
            v = 65536
        }
        return nil
    }

    /// Members in ID order.
    func memberIDs() -> [NodeID] {
        var out: [NodeID] = []
        out.reserveCapacity(memberCount)
        for (w, word) in memberBits.enumerated() where word != 0 {
            var bits = word
            while bits != 0 {
                let b = bits.trailingZeroBitCount
                out.append(NodeID(w << 6 | b)!)
                bits &= bits - 1
            }
        }
        return out
    }

    // MARK: Writing

    /// Learns or refreshes a node from what it said about itself. A claim with a lower incarnation
    /// than known is stale and ignored; a dead or left node comes back only with a higher one.
    @discardableResult
    mutating func observe(_ claim: NodeClaim, now: Instant) -> [NodeMapChange] {
        guard !claim.address.isUnspecified else { return [] }
        var changes: [NodeMapChange] = []
        guard let slot = index[claim.address] else {
            guard storage.count < Self.capacity else {
                // Remote input must not crash the daemon: a 65536th node is refused and counted.
                refusedFull += 1
                return []
            }
            insert(claim, now: now, changes: &changes)
            bump(changes)
            return changes
        }
        var n = storage[Int(slot)]
        if claim.incarnation < n.incarnation { return [] }
        if !n.state.isMember && claim.incarnation == n.incarnation { return [] }
        account(n.address, incarnation: n.incarnation, member: n.state.isMember, adding: false)
        n.lastHeard = max(n.lastHeard, now)
        let oldState = n.state
        if claim.incarnation > n.incarnation && oldState != .alive {
            n.state = .alive
        }
        let contentChanged =
            n.aliases != claim.aliases || n.incarnation != claim.incarnation || n.hops != claim.hops
            || n.heartbeatPort != claim.heartbeatPort || n.capabilities != claim.capabilities
        let claimChanged = n.preferredID != claim.preferredID || n.explicitID != claim.explicitID
        n.aliases = claim.aliases
        n.incarnation = claim.incarnation
        n.hops = claim.hops
        n.heartbeatPort = claim.heartbeatPort
        n.capabilities = claim.capabilities
        storage[Int(slot)] = n
        account(n.address, incarnation: n.incarnation, member: n.state.isMember, adding: true)
        if oldState != n.state {
            setMemberBit(n.id, n.state.isMember)
            changes.append(
                .stateChanged(address: n.address, id: n.id, from: oldState, to: n.state, incarnation: n.incarnation))
        }
        if claimChanged {
            // Re-enter the ID assignment with the new claim.
            removeClaim(slot: slot, changes: &changes)
            storage[Int(slot)].preferredID = claim.preferredID
            storage[Int(slot)].explicitID = claim.explicitID
            addClaim(slot: slot, changes: &changes, newcomer: nil)
        }
        if contentChanged { changes.append(.updated(storage[Int(slot)])) }
        bump(changes)
        return changes
    }

    /// A member heard at a higher incarnation than the map holds, in a datagram that makes no claim
    /// (a heartbeat, a probe, a notice it sends): it refuted or restarted and the announce saying so
    /// was lost here. The map takes the incarnation (a suspect is alive again) and keeps the rest;
    /// otherwise a death this node later declares would name an incarnation every other map has
    /// passed, and be ignored.
    @discardableResult
    mutating func heardAtIncarnation(_ address: IPAddress, _ incarnation: UInt64, now: Instant) -> [NodeMapChange] {
        guard let slot = index[address] else { return [] }
        let n = storage[Int(slot)]
        guard n.state.isMember, incarnation > n.incarnation else { return [] }
        return observe(
            NodeClaim(
                address: n.address, preferredID: n.preferredID, explicitID: n.explicitID, aliases: n.aliases,
                incarnation: incarnation, hops: n.hops, heartbeatPort: n.heartbeatPort, capabilities: n.capabilities),
            now: now)
    }

    /// Records that a node was heard from (a heartbeat) without changing anything else.
    mutating func touch(_ address: IPAddress, now: Instant) {
        guard let slot = index[address] else { return }
        if storage[Int(slot)].lastHeard < now { storage[Int(slot)].lastHeard = now }
    }

    /// Moves a node to `state`. Allowed: alive → suspect → alive (refuted), alive/suspect → dead or left.
    /// A dead or left node returns only through `observe` with a higher incarnation.
    /// `incarnation`, when given, is the incarnation the decision is about: a decision about an
    /// older incarnation than known is ignored.
    @discardableResult
    mutating func setState(
        _ address: IPAddress, to state: NodeState, incarnation: UInt64? = nil
    ) -> [NodeMapChange] {
        guard let slot = index[address] else { return [] }
        var n = storage[Int(slot)]
        if let inc = incarnation, inc < n.incarnation { return [] }
        guard Self.allowed(from: n.state, to: state) else { return [] }
        let old = n.state
        n.state = state
        storage[Int(slot)] = n
        account(address, incarnation: n.incarnation, member: old.isMember, adding: false)
        account(address, incarnation: n.incarnation, member: state.isMember, adding: true)
        if owner[n.id.rawValue] == slot { setMemberBit(n.id, state.isMember) }
        let c: [NodeMapChange] = [
            .stateChanged(address: address, id: n.id, from: old, to: state, incarnation: n.incarnation)
        ]
        bump(c)
        return c
    }

    /// The transitions `setState` performs.
    static func allowed(from: NodeState, to: NodeState) -> Bool {
        switch (from, to) {
        case (.alive, .suspect), (.suspect, .alive), (.alive, .dead), (.suspect, .dead), (.alive, .left),
            (.suspect, .left):
            return true
        default:
            return false
        }
    }

    /// Removes a node (purged after it died or left, or on operator request).
    @discardableResult
    mutating func remove(_ address: IPAddress) -> [NodeMapChange] {
        guard let slot = index[address] else { return [] }
        var changes: [NodeMapChange] = []
        let node = storage[Int(slot)]
        account(node.address, incarnation: node.incarnation, member: node.state.isMember, adding: false)
        removeClaim(slot: slot, changes: &changes)
        // swap-remove
        let last = Int32(storage.count - 1)
        if slot != last {
            let moved = storage[Int(last)]
            storage[Int(slot)] = moved
            index[moved.address] = slot
            if owner[moved.id.rawValue] == last { owner[moved.id.rawValue] = slot }
        }
        storage.removeLast()
        index[node.address] = nil
        changes.insert(.removed(node), at: 0)
        bump(changes)
        return changes
    }

    // MARK: ID assignment

    private mutating func bump(_ changes: [NodeMapChange]) {
        if !changes.isEmpty { generation &+= 1 }
    }

    private mutating func setMemberBit(_ id: NodeID, _ on: Bool) {
        if memberBits.isEmpty {
            guard on else { return }
            memberBits = [UInt64](repeating: 0, count: 1024)
        }
        let w = Int(id.rawValue) >> 6
        let mask: UInt64 = 1 << UInt64(id.rawValue & 63)
        let was = memberBits[w] & mask != 0
        if on && !was {
            memberBits[w] |= mask
            memberCount += 1
        } else if !on && was {
            memberBits[w] &= ~mask
            memberCount -= 1
        }
    }

    private mutating func insert(_ claim: NodeClaim, now: Instant, changes: inout [NodeMapChange]) {
        let node = Node(
            address: claim.address, id: NodeID(rawValue: 1)!, preferredID: claim.preferredID,
            explicitID: claim.explicitID, aliases: claim.aliases, state: .alive, incarnation: claim.incarnation,
            lastHeard: now, hops: claim.hops, heartbeatPort: claim.heartbeatPort, capabilities: claim.capabilities)
        let slot = Int32(storage.count)
        storage.append(node)
        account(node.address, incarnation: node.incarnation, member: true, adding: true)
        index[node.address] = slot
        var local: [NodeMapChange] = []
        addClaim(slot: slot, changes: &local, newcomer: node.address)
        changes.append(.added(storage[Int(slot)]))
        changes.append(contentsOf: local)
    }

    /// Rank for a contested ID: explicit claims first, then the lower address.
    private func ranksBefore(_ a: IPAddress, _ b: IPAddress) -> Bool {
        let na = storage[Int(index[a]!)]
        let nb = storage[Int(index[b]!)]
        if na.explicitID != nb.explicitID { return na.explicitID }
        return a < b
    }

    /// The node in `slot` gives up its ID (owner entry and ring bit); its `id` field keeps the old
    /// value until `take` so that an ID change can be reported.
    @discardableResult
    private mutating func release(_ slot: Int32) -> UInt16? {
        let id = storage[Int(slot)].id
        guard owner[id.rawValue] == slot else { return nil }
        owner[id.rawValue] = nil
        setMemberBit(id, false)
        return id.rawValue
    }

    private mutating func take(
        _ slot: Int32, _ id: NodeID, changes: inout [NodeMapChange], newcomer: IPAddress?
    ) {
        let old = storage[Int(slot)].id
        storage[Int(slot)].id = id
        owner[id.rawValue] = slot
        if storage[Int(slot)].state.isMember { setMemberBit(id, true) }
        let a = storage[Int(slot)].address
        if old != id && a != newcomer { changes.append(.idChanged(address: a, from: old, to: id)) }
    }

    /// Enters the claim of the node in `slot` (which holds no ID) into the assignment.
    private mutating func addClaim(slot: Int32, changes: inout [NodeMapChange], newcomer: IPAddress?) {
        let node = storage[Int(slot)]
        guard let p = node.preferredID else {
            insertLoser(node.address)
            reassignLosers(changed: [], changes: &changes, newcomer: newcomer)
            return
        }
        guard let o = owner[p.rawValue] else {
            // Free: losers' probe paths only skip IDs, so a new winner moves none of them.
            take(slot, p, changes: &changes, newcomer: newcomer)
            return
        }
        let holder = storage[Int(o)]
        if holder.preferredID != p {
            // A substitute holder yields to a real claim: it probes again; p stays taken.
            release(o)
            take(slot, p, changes: &changes, newcomer: newcomer)
            reassignLosers(changed: [], changes: &changes, newcomer: newcomer)
            return
        }
        var claimants = contested[p.rawValue] ?? [holder.address]
        let pos = claimants.firstIndex { ranksBefore(node.address, $0) } ?? claimants.count
        claimants.insert(node.address, at: pos)
        contested[p.rawValue] = claimants
        if pos == 0 {
            release(o)
            insertLoser(holder.address)
            take(slot, p, changes: &changes, newcomer: newcomer)
            changes.append(.collision(id: p, winner: node.address, loser: holder.address))
        } else {
            insertLoser(node.address)
            changes.append(.collision(id: p, winner: holder.address, loser: node.address))
        }
        reassignLosers(changed: [], changes: &changes, newcomer: newcomer)
    }

    /// Takes the claim of the node in `slot` out of the assignment (before removal or a claim change).
    private mutating func removeClaim(slot: Int32, changes: inout [NodeMapChange]) {
        let node = storage[Int(slot)]
        var changed: [UInt16] = []
        if let freed = release(slot) { changed.append(freed) }
        if let p = node.preferredID, var c = contested[p.rawValue] {
            c.removeAll { $0 == node.address }
            contested[p.rawValue] = c.count > 1 ? c : nil
            if let i = losers.firstIndex(of: node.address) {
                losers.remove(at: i)
            } else if let next = c.first {
                // The winner leaves: the next claimant in rank takes the ID (p stays taken; the
                // substitute it held is freed).
                losers.removeAll { $0 == next }
                let ns = index[next]!
                if let freed = release(ns) { changed.append(freed) }
                take(ns, p, changes: &changes, newcomer: nil)
                changed.removeAll { $0 == p.rawValue }
            }
        } else if let i = losers.firstIndex(of: node.address) {
            losers.remove(at: i)
        }
        reassignLosers(changed: changed, changes: &changes, newcomer: nil)
    }

    private mutating func insertLoser(_ address: IPAddress) {
        var lo = 0
        var hi = losers.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if losers[mid] < address { lo = mid + 1 } else { hi = mid }
        }
        if lo < losers.count && losers[lo] == address { return }
        losers.insert(address, at: lo)
    }

    /// Gives every loser, in address order, the first free ID on its probe path: starting at a hash of
    /// its address, stepping by one, skipping IDs held by winners and by earlier losers.
    ///
    /// Incremental: `changed` lists the IDs whose holder changed outside the losers (freed or taken);
    /// a loser is probed again only when it holds no ID, or when an ID that changed (there, or through
    /// an earlier loser's move) lies on its path up to the ID it holds: otherwise its first free ID is
    /// the same as before. A flood of colliding claims costs O(losers) cheap checks per insert, not
    /// O(losers) probes.
    private mutating func reassignLosers(changed: [UInt16], changes: inout [NodeMapChange], newcomer: IPAddress?) {
        guard !losers.isEmpty else { return }
        var changed = changed
        for a in losers {
            let s = index[a]!
            let start = Self.probeStart(a)
            let held = storage[Int(s)].id.rawValue
            if owner[held] == s, !changed.contains(where: { Self.onPath($0, from: start, to: held) }) { continue }
            if let freed = release(s) { changed.append(freed) }
            loserProbes += 1
            var candidate = Int(start)
            var steps = 0
            while owner[UInt16(candidate)] != nil && steps < 65535 {
                candidate = candidate % 65535 + 1
                steps += 1
            }
            // The map holds at most `capacity` nodes, each holding one ID, and this one holds none
            // now: a free ID exists. Were it ever not so, the node keeps no ID rather than trap.
            guard steps < 65535 else { continue }
            take(s, NodeID(candidate)!, changes: &changes, newcomer: newcomer)
            changed.append(UInt16(candidate))
        }
    }

    /// Whether `id` lies on the cyclic probe path start, start+1, ..., end (IDs 1...65535).
    static func onPath(_ id: UInt16, from start: UInt16, to end: UInt16) -> Bool {
        start <= end ? (id >= start && id <= end) : (id >= start || id <= end)
    }

    /// Where a loser's probe for a substitute ID starts: a fixed hash of its address (the same on
    /// every node and every run, unlike Swift's seeded `Hasher`).
    static func probeStart(_ a: IPAddress) -> UInt16 {
        UInt16(addressHash(a) % 65535 + 1)
    }
}
