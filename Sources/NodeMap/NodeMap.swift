import CPrefetch

/// A change to the map, reported by every mutating call so the caller can log it, raise an event,
/// rebuild the detector's ring or rewrite the map file.
public enum NodeMapChange: Hashable, Sendable {
    case added(Node)
    case removed(Node)
    case stateChanged(address: IPAddress, id: NodeID, from: NodeState, to: NodeState, incarnation: UInt64)
    /// Aliases, incarnation, hops, heartbeat port or capabilities changed.
    case updated(Node)
    case idChanged(address: IPAddress, from: NodeID, to: NodeID)
    /// Two nodes claim `id`; `winner` keeps it, `loser` gets a substitute (see docs/NODEMAP.md).
    case collision(id: NodeID, winner: IPAddress, loser: IPAddress)
}

/// What a node says about itself (an announce, a join, a seeded static map line).
public struct NodeClaim: Hashable, Sendable {
    public var address: IPAddress
    public var preferredID: NodeID?
    public var explicitID: Bool
    public var aliases: [Alias]
    public var incarnation: UInt64
    public var hops: UInt8
    public var heartbeatPort: UInt16
    public var capabilities: [Capability]

    public init(
        address: IPAddress, preferredID: NodeID? = nil, explicitID: Bool = false, aliases: [Alias] = [],
        incarnation: UInt64 = 0, hops: UInt8 = 0, heartbeatPort: UInt16 = 0, capabilities: [Capability] = []
    ) {
        self.address = address
        self.preferredID = explicitID ? preferredID : (preferredID ?? NodeID.derived(from: address))
        self.explicitID = explicitID && preferredID != nil
        self.aliases = aliases
        self.incarnation = incarnation
        self.hops = hops
        self.heartbeatPort = heartbeatPort
        self.capabilities = capabilities
    }
}

/// The cluster's node map: who is there, under which ID, in which state.
///
/// Pure and deterministic: no I/O, no clock. Time (`now`) is passed in by the caller in
/// nanoseconds of "map time"; `timeBaseUnixNanos` says which wall-clock instant map time 0 was,
/// so that readers of the map file can show ages.
///
/// IDs are assigned by a pure function of the set of claims in the map (see `docs/NODEMAP.md`):
/// every node holding the same claims holds the same assignment, whatever order they arrived in.
public struct NodeMap: Sendable {
    // First, within `lookupBytes`: what a look-up reads (and a repeated claim writes through), so
    // that a struct holding the map can put its own hot fields right before them (`ClusterNode`:
    // the simulator asks for the lines a datagram reads in thousands of nodes' maps in turn).
    // Swift lays a struct out in declaration order.
    /// The nodes, one column per field (NodeColumns.swift); a node's slot is its index there.
    private var storage = NodeColumns()
    /// Address → slot.
    private var index = SlotIndex()
    /// How many bytes from the start of the map hold the fields a look-up reads.
    public static let lookupBytes = MemoryLayout<NodeMap>.offset(of: \NodeMap.index)! + MemoryLayout<SlotIndex>.size

    public private(set) var generation: UInt64 = 0
    /// How many changes the map has reported in all (the sum of the lengths of every change list a
    /// mutating call returned): a reader that saw `changeTotal` and is handed the next `k` changes
    /// knows it missed none when the total is then its count + k.
    public private(set) var changeTotal: UInt64 = 0
    public var timeBaseUnixNanos: Int64 = 0

    /// Assigned ID → slot.
    private var owner = OwnerTable()
    /// Preferred IDs with two or more claimants → their addresses, best rank first.
    private var contested: [UInt16: [IPAddress]] = [:]
    /// Nodes that hold a substitute ID, sorted by address.
    private var losers: [IPAddress] = []
    /// Bitmap of IDs whose node is a member (alive or suspect): the detector's ring.
    private var memberBits: [UInt64] = []
    public private(set) var memberCount = 0
    /// Claims of new nodes refused because every ID is taken (65535 nodes): counted, never a trap.
    public private(set) var refusedFull = 0
    /// Losers whose substitute ID was (re)computed by probing: the cost of the ID assignment.
    public private(set) var loserProbes = 0
    /// The most nodes a map holds: one per ID.
    public static let capacity = 65535

    /// Anti-entropy digest (docs/PROTOCOL.md "Anti-entropy"): the sum mod 2^64 of `digestTerm` over
    /// members (alive or suspect). Independent of arrival order, updated in O(1) per change; dead,
    /// left and removed nodes drop out, so a map that purged X equals one that holds X dead.
    public private(set) var digest: UInt64 = 0
    /// Members counted by state (alive or suspect), whether or not they hold an ID.
    public private(set) var digestMembers = 0
    /// The digest split by `digestBucket` of the address (allocated with the first member).
    private var bucketSums: [UInt64] = []
    /// Buckets of the digest: a sync compares them to find which entries differ.
    public static let digestBuckets = 1024

    /// `capacityHint`: the number of nodes the map is expected to hold (the simulator knows it), so
    /// that its arrays are allocated once instead of doubling; it is not a limit.
    public init(timeBaseUnixNanos: Int64 = 0, capacityHint: Int = 0) {
        self.timeBaseUnixNanos = timeBaseUnixNanos
        let hint = Swift.min(Swift.max(capacityHint, 0), Self.capacity)
        if hint > 0 {
            storage.reserve(hint)
            index = SlotIndex(capacityHint: hint)
            owner = OwnerTable(capacityHint: hint)
        }
    }

    @inline(__always)
    private func slot(_ a: IPAddress) -> Int32? { index.find(a, in: storage) }

    /// Cache hints for a caller about to look `a` up in many maps in turn (the simulator hands each
    /// multicast to thousands of nodes' maps, none of which the cache holds): step 0 asks for the
    /// index entry of `a`, step 1 (once that has arrived) for the record it points to. The map does
    /// not change; a hint that points wrong costs a wasted line, nothing else.
    ///
    /// Where `a`'s home entry is empty, `a` is news and the input will insert it: step 1 then asks
    /// for the lines an insert writes instead (the end of the records, the ID table's entry for the
    /// ID `a` derives, its member bit and its digest bucket: at 10,000 nodes, those misses were a
    /// fifth of a start), and returns true, so that the caller can ask for more of its own.
    ///
    /// `mutating` only so that the map is passed by address (see `briefInPlace`); it changes nothing.
    @discardableResult
    public mutating func prefetch(_ a: IPAddress, step: Int) -> Bool {
        if step == 0 {
            index.prefetchHome(a)
            storage.prefetchRecord(0)
            return false
        } else if let s = index.homeSlot(a) {
            storage.prefetchRecord(s)
            return false
        } else {
            storage.prefetchRecord(storage.count)
            let id = NodeID.derived(from: a)?.rawValue ?? 0
            owner.prefetch(id)
            memberBits.withUnsafeBufferPointer { b in
                if let p = b.baseAddress { discd_prefetch(p + Int(id >> 6)) }
            }
            bucketSums.withUnsafeBufferPointer { b in
                if let p = b.baseAddress { discd_prefetch(p + Self.digestBucket(a)) }
            }
            return true
        }
    }

    // MARK: Reading

    public var count: Int { storage.count }
    public var isEmpty: Bool { storage.count == 0 }
    /// All nodes, in no particular order.
    public var nodes: [Node] { (0..<storage.count).map { storage.node($0) } }
    public subscript(address: IPAddress) -> Node? { slot(address).map { storage.node(Int($0)) } }
    public func node(id: NodeID) -> Node? { owner[id.rawValue].map { storage.node(Int($0)) } }
    /// The scalar fields of the node with `address`, read without copying its aliases and
    /// capabilities: for the paths that look a node up for every datagram (a `Node` copy retains two
    /// arrays; in a 2,000-node simulator run those retains were 13 % of the time).
    public func brief(_ address: IPAddress) -> NodeBrief? {
        guard let slot = slot(address) else { return nil }
        return storage.brief(Int(slot))
    }
    /// `brief`, for a caller that holds the map in place (a stored property of a struct it mutates,
    /// or one in a class): `mutating` only so that the map is passed by address. Calling the
    /// non-mutating `brief` there copies the whole map (168 bytes, three cache lines) to hand it
    /// over, on every datagram.
    /// (Its body repeats `brief`'s: calling `brief` from here copies the map again, as the
    /// disassembly showed.)
    public mutating func briefInPlace(_ address: IPAddress) -> NodeBrief? {
        guard let slot = slot(address) else { return nil }
        return storage.brief(Int(slot))
    }
    /// `brief` for the node that holds `id`.
    public func brief(id: NodeID) -> NodeBrief? {
        guard let slot = owner[id.rawValue] else { return nil }
        return storage.brief(Int(slot))
    }
    public func contains(_ address: IPAddress) -> Bool { slot(address) != nil }
    /// Calls `body` with the scalar fields of every node, in no particular order, without building
    /// `Node` values (`nodes` copies every node's aliases and capabilities).
    public func forEachBrief(_ body: (NodeBrief) throws -> Void) rethrows {
        for s in 0..<storage.count { try body(storage.brief(s)) }
    }
    /// All nodes ordered by assigned ID.
    public func sortedByID() -> [Node] { nodes.sorted { $0.id < $1.id } }
    /// Addresses of nodes that currently hold a substitute ID.
    public var collisionLosers: [IPAddress] { losers }

    /// Finds the node that has `address` as its primary address or as one of its aliases.
    public func node(anyAddress address: IPAddress) -> Node? {
        if let n = self[address] { return n }
        for s in storage.slotsWithExtras where storage.aliases(s).contains(where: { $0.address == address }) {
            return storage.node(s)
        }
        return nil
    }

    // MARK: Digest

    /// A fixed 64-bit hash of an address (the same on every node and every run).
    @inlinable
    public static func addressHash(_ a: IPAddress) -> UInt64 {
        mix64(a.hi &* 0x9E37_79B9_7F4A_7C15 ^ a.lo)
    }

    @inlinable
    public static func mix64(_ v: UInt64) -> UInt64 {
        var x = v
        x ^= x >> 30
        x &*= 0xBF58_476D_1CE4_E5B9
        x ^= x >> 27
        x &*= 0x94D0_49BB_1331_11EB
        x ^= x >> 31
        return x
    }

    /// The digest bucket of an address: the top 10 bits of its hash.
    @inlinable
    public static func digestBucket(_ a: IPAddress) -> Int { Int(addressHash(a) >> 54) }

    /// A member's term of the digest.
    @inlinable
    public static func digestTerm(_ a: IPAddress, incarnation: UInt64) -> UInt64 {
        mix64(addressHash(a) ^ (incarnation &+ 1) &* 0xD6E8_FEB8_6659_FD93)
    }

    /// The sum of `digestTerm` over the members in bucket `k`.
    public func bucketSum(_ k: Int) -> UInt64 { bucketSums.isEmpty ? 0 : bucketSums[k] }

    /// Every bucket sum folded to one byte with `salt` (a new salt per sync session, so that two
    /// different sums that fold to the same byte do not hide a difference twice in a row).
    public func saltedBucketSums(salt: UInt32) -> [UInt8] {
        (0..<Self.digestBuckets).map { Self.salted(bucketSum($0), salt: salt) }
    }

    @inlinable
    public static func salted(_ sum: UInt64, salt: UInt32) -> UInt8 {
        UInt8(truncatingIfNeeded: mix64(sum ^ UInt64(salt) &* 0xA24B_AED4_963E_E407) >> 56)
    }

    /// The nodes (members and tombstones) whose address falls in a bucket `wanted` says yes to.
    public func nodes(inBuckets wanted: (Int) -> Bool) -> [Node] {
        var out: [Node] = []
        for s in 0..<storage.count where wanted(Self.digestBucket(storage.address(s))) { out.append(storage.node(s)) }
        return out
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

    public func isMember(_ id: NodeID) -> Bool {
        let w = Int(id.rawValue) >> 6
        return w < memberBits.count && memberBits[w] & (1 << UInt64(id.rawValue & 63)) != 0
    }

    /// The next member after `id` on the ring (wrapping), excluding `id` itself; nil if there is none.
    public func successor(of id: NodeID) -> NodeID? {
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
    public func predecessor(of id: NodeID) -> NodeID? {
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
    public func memberIDs() -> [NodeID] {
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
    public mutating func observe(_ claim: NodeClaim, now: Instant) -> [NodeMapChange] {
        guard !claim.address.isUnspecified else { return [] }
        var changes: [NodeMapChange] = []
        guard let slot = slot(claim.address) else {
            guard storage.count < Self.capacity else {
                // Remote input must not crash the daemon: a 65536th node is refused and counted.
                refusedFull += 1
                return []
            }
            insert(claim, now: now, changes: &changes)
            bump(changes)
            return changes
        }
        let s = Int(slot)
        let m = storage.meta(s)
        let known = storage.incarnation(s)
        if claim.incarnation < known { return [] }
        if !m.state.isMember && claim.incarnation == known { return [] }
        if refreshRepeat(slot: s, claim, now: now) { return [] }
        var n = storage.node(s)
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
        storage.set(s, n)
        account(n.address, incarnation: n.incarnation, member: n.state.isMember, adding: true)
        if oldState != n.state {
            setMemberBit(n.id, n.state.isMember)
            changes.append(
                .stateChanged(address: n.address, id: n.id, from: oldState, to: n.state, incarnation: n.incarnation))
        }
        if claimChanged {
            // Re-enter the ID assignment with the new claim.
            removeClaim(slot: slot, changes: &changes)
            var c = storage.node(s)
            c.preferredID = claim.preferredID
            c.explicitID = claim.explicitID
            storage.set(s, c)
            addClaim(slot: slot, changes: &changes, newcomer: nil)
        }
        if contentChanged { changes.append(.updated(storage.node(s))) }
        bump(changes)
        return changes
    }

    /// `observe` for a claim that repeats what the map holds of a member (the same incarnation and
    /// fields, no aliases or capabilities: a repeated announce), which changes only the time heard.
    /// Returns false, changing nothing, for any other claim: `observe` has work to do for it.
    public mutating func refreshRepeat(_ claim: NodeClaim, now: Instant) -> Bool {
        guard let slot = slot(claim.address) else { return false }
        return refreshRepeat(slot: Int(slot), claim, now: now)
    }

    @inline(__always)
    private mutating func refreshRepeat(slot s: Int, _ claim: NodeClaim, now: Instant) -> Bool {
        let m = storage.meta(s)
        guard claim.incarnation == storage.incarnation(s), m.state.isMember, !m.hasExtras, claim.aliases.isEmpty,
            claim.capabilities.isEmpty, m.hops == claim.hops, m.heartbeatPort == claim.heartbeatPort,
            m.preferredID == claim.preferredID, m.explicitID == claim.explicitID
        else { return false }
        if storage.heardBefore(s, now.nanos) { storage.setHeard(s, now.nanos) }
        return true
    }

    /// A member heard at a higher incarnation than the map holds, in a datagram that makes no claim
    /// (a heartbeat, a probe, a notice it sends): it refuted or restarted and the announce saying so
    /// was lost here. The map takes the incarnation (a suspect is alive again) and keeps the rest;
    /// otherwise a death this node later declares would name an incarnation every other map has
    /// passed, and be ignored.
    @discardableResult
    public mutating func heardAtIncarnation(_ address: IPAddress, _ incarnation: UInt64, now: Instant) -> [NodeMapChange] {
        guard let slot = slot(address) else { return [] }
        let n = storage.node(Int(slot))
        guard n.state.isMember, incarnation > n.incarnation else { return [] }
        return observe(
            NodeClaim(
                address: n.address, preferredID: n.preferredID, explicitID: n.explicitID, aliases: n.aliases,
                incarnation: incarnation, hops: n.hops, heartbeatPort: n.heartbeatPort, capabilities: n.capabilities),
            now: now)
    }

    /// Records that a node was heard from (a heartbeat) without changing anything else.
    public mutating func touch(_ address: IPAddress, now: Instant) {
        guard let slot = slot(address) else { return }
        if storage.heardBefore(Int(slot), now.nanos) { storage.setHeard(Int(slot), now.nanos) }
    }

    /// Moves a node to `state`. Allowed: alive → suspect → alive (refuted), alive/suspect → dead or left.
    /// A dead or left node returns only through `observe` with a higher incarnation.
    /// `incarnation`, when given, is the incarnation the decision is about: a decision about an
    /// older incarnation than known is ignored.
    @discardableResult
    public mutating func setState(
        _ address: IPAddress, to state: NodeState, incarnation: UInt64? = nil
    ) -> [NodeMapChange] {
        guard let slot = slot(address) else { return [] }
        let s = Int(slot)
        let m = storage.meta(s)
        let known = storage.incarnation(s)
        if let inc = incarnation, inc < known { return [] }
        guard Self.allowed(from: m.state, to: state) else { return [] }
        let old = m.state
        storage.setState(s, state)
        account(address, incarnation: known, member: old.isMember, adding: false)
        account(address, incarnation: known, member: state.isMember, adding: true)
        if owner[m.idRaw] == slot { setMemberBit(m.id, state.isMember) }
        let c: [NodeMapChange] = [
            .stateChanged(address: address, id: m.id, from: old, to: state, incarnation: known)
        ]
        bump(c)
        return c
    }

    /// The transitions `setState` performs.
    public static func allowed(from: NodeState, to: NodeState) -> Bool {
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
    public mutating func remove(_ address: IPAddress) -> [NodeMapChange] {
        guard let slot = slot(address) else { return [] }
        var changes: [NodeMapChange] = []
        let node = storage.node(Int(slot))
        account(node.address, incarnation: node.incarnation, member: node.state.isMember, adding: false)
        removeClaim(slot: slot, changes: &changes)
        // swap-remove: the last slot moves into this one
        let last = Int32(storage.count - 1)
        index.remove(node.address, slot: slot, in: storage)
        if slot != last {
            index.repoint(storage.address(Int(last)), from: last, to: slot)
            let movedID = storage.meta(Int(last)).idRaw
            if owner[movedID] == last { owner[movedID] = slot }
        }
        storage.moveLast(to: Int(slot))
        changes.insert(.removed(node), at: 0)
        bump(changes)
        return changes
    }

    // MARK: ID assignment

    private mutating func bump(_ changes: [NodeMapChange]) {
        if !changes.isEmpty {
            generation &+= 1
            changeTotal &+= UInt64(changes.count)
        }
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
        index.insert(node.address, slot: slot, in: storage)
        var local: [NodeMapChange] = []
        addClaim(slot: slot, changes: &local, newcomer: node.address)
        changes.append(.added(storage.node(Int(slot))))
        changes.append(contentsOf: local)
    }

    /// Rank for a contested ID: explicit claims first, then the lower address.
    private func ranksBefore(_ a: IPAddress, _ b: IPAddress) -> Bool {
        let ea = storage.meta(Int(slot(a)!)).explicitID
        let eb = storage.meta(Int(slot(b)!)).explicitID
        if ea != eb { return ea }
        return a < b
    }

    /// The node in `slot` gives up its ID (owner entry and ring bit); its `id` field keeps the old
    /// value until `take` so that an ID change can be reported.
    @discardableResult
    private mutating func release(_ slot: Int32) -> UInt16? {
        let id = storage.meta(Int(slot)).id
        guard owner[id.rawValue] == slot else { return nil }
        owner[id.rawValue] = nil
        setMemberBit(id, false)
        return id.rawValue
    }

    private mutating func take(
        _ slot: Int32, _ id: NodeID, changes: inout [NodeMapChange], newcomer: IPAddress?
    ) {
        let s = Int(slot)
        let old = storage.meta(s).id
        storage.setID(s, id)
        owner[id.rawValue] = slot
        if storage.meta(s).state.isMember { setMemberBit(id, true) }
        let a = storage.address(s)
        if old != id && a != newcomer { changes.append(.idChanged(address: a, from: old, to: id)) }
    }

    /// Enters the claim of the node in `slot` (which holds no ID) into the assignment.
    private mutating func addClaim(slot: Int32, changes: inout [NodeMapChange], newcomer: IPAddress?) {
        let node = (address: storage.address(Int(slot)), preferredID: storage.meta(Int(slot)).preferredID)
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
        let holder = (address: storage.address(Int(o)), preferredID: storage.meta(Int(o)).preferredID)
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
        let node = (address: storage.address(Int(slot)), preferredID: storage.meta(Int(slot)).preferredID)
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
                let ns = self.slot(next)!
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
            let s = slot(a)!
            let start = Self.probeStart(a)
            let held = storage.meta(Int(s)).idRaw
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
    public static func probeStart(_ a: IPAddress) -> UInt16 {
        UInt16(addressHash(a) % 65535 + 1)
    }
}
