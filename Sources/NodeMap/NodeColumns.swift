import CPrefetch

/// The storage of a `NodeMap`: one 24-byte record per node, so that an entry costs about 29 bytes
/// with its index instead of a 72-byte `Node` (docs/design/scale.md §3). The simulator holds one
/// map per node, N² entries in all; at 10,000 nodes that is 10^8 entries.
///
/// - While every address is IPv4, the 4-byte address is the record's `key`: a look-up reads the
///   record it checks (one cache line, where a separate key column cost a second). From the first
///   IPv6 address on, the 16-byte addresses live in their own column (converted once, in O(n)).
/// - `meta` packs the small fields into one word (`Meta`).
/// - The time heard is 32 bits of whole milliseconds after a base (`HeardClock`), rounded up.
/// - Aliases and capabilities, rare and variable in size, live in a side table keyed by slot.
///
/// Slots are dense (0..<count) and move only by `moveLast(to:)`, as `[Node]` did with a swap-remove.
struct NodeColumns: Sendable {
    private var full: [IPAddress] = []
    /// Whether some address is not IPv4 (then `full` holds every address and the records' keys
    /// are not read).
    private(set) var wide = false
    /// The fields a datagram's look-up reads and writes, side by side: one cache line, not three.
    private var records: [Record] = []
    private var extras: [Int32: Extras] = [:]
    private var clock = HeardClock()

    struct Record: Sendable {
        var incarnation: UInt64
        var meta: Meta
        /// `HeardClock` ticks.
        var heard: UInt32
        /// The IPv4 address (while the map is not wide).
        var key: UInt32
    }

    struct Extras: Sendable {
        var aliases: [Alias]
        var capabilities: [Capability]
    }

    /// id 16 bits, preferred ID 16 (0 = none), heartbeat port 16, hops 8, state 3, explicit 1,
    /// has extras 1.
    struct Meta: Sendable {
        var raw: UInt64

        init(_ n: borrowing Node) {
            raw = UInt64(n.id.rawValue) | UInt64(n.preferredID?.rawValue ?? 0) << 16
                | UInt64(n.heartbeatPort) << 32 | UInt64(n.hops) << 48 | UInt64(n.state.rawValue & 7) << 56
                | (n.explicitID ? 1 << 59 : 0) | (n.aliases.isEmpty && n.capabilities.isEmpty ? 0 : 1 << 60)
        }

        @inline(__always) var idRaw: UInt16 { UInt16(truncatingIfNeeded: raw) }
        @inline(__always) var id: NodeID { NodeID(unchecked: idRaw) }
        @inline(__always) var preferredID: NodeID? { NodeID(rawValue: UInt16(truncatingIfNeeded: raw >> 16)) }
        @inline(__always) var heartbeatPort: UInt16 { UInt16(truncatingIfNeeded: raw >> 32) }
        @inline(__always) var hops: UInt8 { UInt8(truncatingIfNeeded: raw >> 48) }
        @inline(__always) var state: NodeState {
            NodeState(rawValue: UInt8(truncatingIfNeeded: raw >> 56) & 7) ?? .dead
        }
        @inline(__always) var explicitID: Bool { raw & 1 << 59 != 0 }
        @inline(__always) var hasExtras: Bool { raw & 1 << 60 != 0 }

        @inline(__always) mutating func setID(_ id: NodeID) {
            raw = raw & ~0xFFFF | UInt64(id.rawValue)
        }
        @inline(__always) mutating func setState(_ s: NodeState) {
            raw = raw & ~(7 << 56) | UInt64(s.rawValue & 7) << 56
        }
    }

    var count: Int { records.count }

    /// Cache hint: slot `s`'s record (slot 0: the first line, which a bounds check reads). Not
    /// bounds-checked (that would read the line this is meant not to wait for); a prefetch of any
    /// address is harmless.
    func prefetchRecord(_ s: Int) {
        records.withUnsafeBufferPointer { b in
            if let p = b.baseAddress { discd_prefetch(p + s) }
        }
    }
    @inline(__always) func meta(_ s: Int) -> Meta { records[s].meta }
    @inline(__always) func incarnation(_ s: Int) -> UInt64 { records[s].incarnation }
    @inline(__always) func heard(_ s: Int) -> UInt64 { clock.nanos(records[s].heard) }

    mutating func reserve(_ n: Int) {
        if wide { full.reserveCapacity(n) }
        records.reserveCapacity(n)
    }

    @inline(__always)
    func address(_ s: Int) -> IPAddress { wide ? full[s] : IPAddress(v4: records[s].key) }

    /// Whether slot `s` holds `a`: for IPv4 keys a 4-byte compare.
    @inline(__always)
    func holds(_ s: Int, _ a: IPAddress) -> Bool {
        if wide { return full[s] == a }
        return a.isIPv4 && records[s].key == a.v4Value
    }

    func node(_ s: Int) -> Node {
        let r = records[s]
        let m = r.meta
        let x = m.hasExtras ? extras[Int32(s)] : nil
        return Node(
            address: address(s), id: m.id, preferredID: m.preferredID, explicitID: m.explicitID,
            aliases: x?.aliases ?? [], state: m.state, incarnation: r.incarnation, lastHeard: Instant(nanos: clock.nanos(r.heard)),
            hops: m.hops, heartbeatPort: m.heartbeatPort, capabilities: x?.capabilities ?? [])
    }

    func brief(_ s: Int) -> NodeBrief {
        let r = records[s]
        return NodeBrief(
            address: wide ? full[s] : IPAddress(v4: r.key), id: r.meta.id, state: r.meta.state, incarnation: r.incarnation,
            lastHeard: Instant(nanos: clock.nanos(r.heard)), hops: r.meta.hops, heartbeatPort: r.meta.heartbeatPort)
    }

    func aliases(_ s: Int) -> [Alias] { meta(s).hasExtras ? extras[Int32(s)]?.aliases ?? [] : [] }

    /// Slots whose node has aliases (few: multi-homed and routed hosts).
    var slotsWithExtras: [Int] { extras.keys.map { Int($0) }.sorted() }

    mutating func append(_ n: Node) {
        if !wide && !n.address.isIPv4 { widen() }
        if wide { full.append(n.address) }
        let heard = ticks(n.lastHeard.nanos)
        records.append(
            Record(incarnation: n.incarnation, meta: Meta(n), heard: heard, key: wide ? 0 : n.address.v4Value))
        if records[records.count - 1].meta.hasExtras {
            extras[Int32(records.count - 1)] = Extras(aliases: n.aliases, capabilities: n.capabilities)
        }
    }

    /// Writes every field of slot `s` but its address (which never changes in place).
    mutating func set(_ s: Int, _ n: Node) {
        let heard = ticks(n.lastHeard.nanos)
        records[s] = Record(incarnation: n.incarnation, meta: Meta(n), heard: heard, key: records[s].key)
        if records[s].meta.hasExtras {
            extras[Int32(s)] = Extras(aliases: n.aliases, capabilities: n.capabilities)
        } else if !extras.isEmpty {
            extras[Int32(s)] = nil
        }
    }

    @inline(__always) mutating func setHeard(_ s: Int, _ t: UInt64) {
        let heard = ticks(t)
        records[s].heard = heard
    }

    /// Whether `t` is later than slot `s`'s time heard, as the map keeps it (whole milliseconds).
    @inline(__always) func heardBefore(_ s: Int, _ t: UInt64) -> Bool { records[s].heard < clock.ticksIfNoRebase(t) }

    /// `t` as ticks, moving the clock's base on (and every record with it) when `t` is too far past it.
    @inline(__always)
    private mutating func ticks(_ t: UInt64) -> UInt32 {
        if let k = clock.ticks(t) { return k }
        return rebase(to: t)
    }

    /// Once every 2^30 ms of a clock that runs on: out of the inlined path.
    @inline(never)
    private mutating func rebase(to t: UInt64) -> UInt32 {
        let shift = clock.rebase(to: t)
        for s in records.indices {
            let h = UInt64(records[s].heard)
            records[s].heard = h > shift ? UInt32(h - shift) : 0
        }
        return clock.ticks(t)!
    }
    @inline(__always) mutating func setID(_ s: Int, _ id: NodeID) { records[s].meta.setID(id) }
    @inline(__always) mutating func setState(_ s: Int, _ st: NodeState) { records[s].meta.setState(st) }

    /// Moves the last slot into `s` (whose node is being removed) and drops the last slot.
    mutating func moveLast(to s: Int) {
        let last = count - 1
        if s != last {
            if wide { full[s] = full[last] }
            records[s] = records[last]
            if !extras.isEmpty { extras[Int32(s)] = extras[Int32(last)] }
        }
        if wide { full.removeLast() }
        records.removeLast()
        if !extras.isEmpty { extras[Int32(last)] = nil }
    }

    private mutating func widen() {
        full = records.map { IPAddress(v4: $0.key) }
        full.reserveCapacity(records.capacity)
        wide = true
    }
}

/// Address → slot, by open addressing with linear probing over `[UInt16]` (0xFFFF = empty; a map
/// holds at most 65,535 nodes, slots 0...65534). The key is checked against the columns, so a table
/// entry costs 2 bytes (about 3.3 bytes per node at a load of at most 3/4); deletion shifts back
/// (no tombstones). The hash is fixed (`home`): the same on every run.
struct SlotIndex: Sendable {
    private var table: [UInt16] = []
    private var mask = 0
    private(set) var count = 0
    static let empty: UInt16 = 0xFFFF

    init(capacityHint: Int = 0) {
        if capacityHint > 0 { resize(Self.tableSize(for: capacityHint)) }
    }

    private static func tableSize(for n: Int) -> Int {
        var size = 16
        while size * 3 < n * 4 { size <<= 1 }
        return size
    }

    @inline(__always)
    private func home(_ a: IPAddress) -> Int { Int(truncatingIfNeeded: Self.hash(a)) & mask }

    /// The nodes of a cluster mostly share their upper address bits and differ in the low 16 (the
    /// octets their IDs derive from, unique by design): the low 16 bits XORed with a mix of the rest
    /// give every node of one /16 its own home in a table of 65,536 or more, and sequentially
    /// numbered nodes their own in any table that holds them (the simulator's 10.0.B.C: one probe
    /// per look-up, where linear probing over a full mix expects 1.8 at a load of 0.61). Nodes of other prefixes are
    /// spread by the mix. Like the mix before it, the hash is fixed, not keyed: the map holds at
    /// most 65,535 nodes, so a probe run is bounded by that.
    @inline(__always)
    static func hash(_ a: IPAddress) -> UInt64 {
        (a.lo & 0xFFFF) ^ NodeMap.mix64(a.hi &* 0x9E37_79B9_7F4A_7C15 ^ a.lo >> 16)
    }

    /// Cache hint: the line of `a`'s home entry (and the table's first line, which a bounds check reads).
    func prefetchHome(_ a: IPAddress) {
        guard count > 0 else { return }
        table.withUnsafeBufferPointer { b in
            guard let p = b.baseAddress else { return }
            discd_prefetch(p)
            discd_prefetch(p + home(a))
        }
    }

    /// The slot `a`'s home entry points to (the slot of `a` when there was no collision), for a hint.
    func homeSlot(_ a: IPAddress) -> Int? {
        guard count > 0 else { return nil }
        let e = table[home(a)]
        return e == Self.empty ? nil : Int(e)
    }

    /// The slot holding `a`.
    @inline(__always)
    func find(_ a: IPAddress, in c: NodeColumns) -> Int32? {
        guard count > 0 else { return nil }
        var i = home(a)
        while true {
            let e = table[i]
            if e == Self.empty { return nil }
            if c.holds(Int(e), a) { return Int32(e) }
            i = (i + 1) & mask
        }
    }

    /// Adds `a` (not present) at `slot`.
    mutating func insert(_ a: IPAddress, slot: Int32, in c: NodeColumns) {
        if (count + 1) * 4 > table.count * 3 { grow(c) }
        var i = home(a)
        while table[i] != Self.empty { i = (i + 1) & mask }
        table[i] = UInt16(slot)
        count += 1
    }

    /// Points the entry of `a` (at `from`) to `to`.
    mutating func repoint(_ a: IPAddress, from: Int32, to: Int32) {
        var i = home(a)
        while table[i] != Self.empty {
            if table[i] == UInt16(from) {
                table[i] = UInt16(to)
                return
            }
            i = (i + 1) & mask
        }
    }

    /// Removes `a` (at `slot`); `c` must still hold every key the table points to.
    mutating func remove(_ a: IPAddress, slot: Int32, in c: NodeColumns) {
        var i = home(a)
        while table[i] != UInt16(slot) {
            if table[i] == Self.empty { return }
            i = (i + 1) & mask
        }
        // Backward shift: move up each later entry of the run that may sit at i.
        var j = i
        while true {
            j = (j + 1) & mask
            let e = table[j]
            if e == Self.empty { break }
            let h = home(c.address(Int(e)))
            let inRange = i <= j ? (h > i && h <= j) : (h > i || h <= j)
            if !inRange {
                table[i] = e
                i = j
            }
        }
        table[i] = Self.empty
        count -= 1
    }

    private mutating func grow(_ c: NodeColumns) {
        let old = table
        resize(Swift.max(16, table.count * 2))
        for e in old where e != Self.empty {
            var i = home(c.address(Int(e)))
            while table[i] != Self.empty { i = (i + 1) & mask }
            table[i] = e
        }
    }

    private mutating func resize(_ size: Int) {
        table = [UInt16](repeating: Self.empty, count: size)
        mask = size - 1
    }
}

/// Assigned ID → slot, as a direct array indexed by ID (0xFFFF = none), grown to the highest ID
/// held: no hashing, 2 bytes per ID up to the highest (at most 128 KB for a map that holds ID 65535).
struct OwnerTable: Sendable {
    private var table: [UInt16] = []

    init(capacityHint: Int = 0) {
        if capacityHint > 0 { table.reserveCapacity(capacityHint + 1) }
    }

    /// Cache hint: the table's header (its count, which a look-up checks first) and `id`'s entry.
    /// Not bounds-checked; a prefetch of any address is harmless.
    func prefetch(_ id: UInt16) {
        table.withUnsafeBufferPointer { b in
            guard let p = b.baseAddress else { return }
            discd_prefetch(UnsafeRawPointer(p) - 32)
            discd_prefetch(p + Int(id))
        }
    }

    @inline(__always)
    subscript(id: UInt16) -> Int32? {
        get {
            let i = Int(id)
            guard i < table.count else { return nil }
            let e = table[i]
            return e == SlotIndex.empty ? nil : Int32(e)
        }
        set {
            let i = Int(id)
            if let s = newValue {
                if i >= table.count {
                    table.append(contentsOf: repeatElement(SlotIndex.empty, count: i + 1 - table.count))
                }
                table[i] = UInt16(s)
            } else if i < table.count {
                table[i] = SlotIndex.empty
            }
        }
    }
}

/// The time heard of a map entry in 32 bits: whole milliseconds after `base` (a multiple of a
/// millisecond), rounded up, so that a datagram heard after an instant never reads as heard before
/// it (the detector clears a suspicion when the node was heard after it began; the time heard
/// reads at most 1 ms late, which delays an expiry by as much). A time before the base is the base.
/// 2^32 ms is 49.7 days: when an
/// instant lies more than 2^31 ms past the base, the base moves on by whole milliseconds so that it
/// lies 2^30 ms (12.4 days) behind, and entries heard before the new base read as heard at it (the
/// map expires a silent node within minutes, so nothing reads such an age). A daemon on a
/// CLOCK_MONOTONIC that has run for months rebases once every 37 days, in O(n).
struct HeardClock: Sendable {
    private(set) var base: UInt64 = 0
    static let unit: UInt64 = 1_000_000
    static let limit: UInt64 = 1 << 31
    static let lag: UInt64 = 1 << 30

    @inline(__always) func nanos(_ k: UInt32) -> UInt64 { base &+ UInt64(k) &* Self.unit }

    /// `t` in ticks, or nil when it lies too far past the base.
    @inline(__always) func ticks(_ t: UInt64) -> UInt32? {
        guard t > base else { return 0 }
        let k = (t - base + Self.unit - 1) / Self.unit
        return k < Self.limit ? UInt32(k) : nil
    }

    /// `t` in ticks for a comparison: past the limit, above every stored value.
    @inline(__always) func ticksIfNoRebase(_ t: UInt64) -> UInt32 { ticks(t) ?? UInt32.max }

    /// Moves the base so that `t` lies `lag` ticks past it; returns how many ticks it moved.
    mutating func rebase(to t: UInt64) -> UInt64 {
        let newBase = (t / Self.unit - Self.lag) * Self.unit
        let shift = (newBase - base) / Self.unit
        base = newBase
        return shift
    }
}
