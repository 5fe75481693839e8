/// The storage of a `NodeMap`: keys in one array, the other fields packed in another, so that an entry costs
/// about 28 bytes instead of a 72-byte `Node` (docs/design/scale.md §3). The simulator holds one
/// map per node, N² entries in all; at 10,000 nodes that is 10^8 entries.
///
/// - Addresses are 4-byte keys while every address is IPv4, and 16-byte ones from the first IPv6
///   address on (converted once, in O(n)).
/// - `meta` packs the small fields into one word (`Meta`).
/// - Aliases and capabilities, rare and variable in size, live in a side table keyed by slot.
///
/// Slots are dense (0..<count) and move only by `moveLast(to:)`, as `[Node]` did with a swap-remove.
struct NodeColumns: Sendable {
    private var v4: [UInt32] = []
    private var full: [IPAddress] = []
    /// Whether some address is not IPv4 (then `full` holds every address and `v4` none).
    private(set) var wide = false
    /// The fields a datagram's look-up reads and writes, side by side: one cache line, not three.
    private var records: [Record] = []
    private var extras: [Int32: Extras] = [:]

    struct Record: Sendable {
        var incarnation: UInt64
        var heard: UInt64
        var meta: Meta
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
    @inline(__always) func meta(_ s: Int) -> Meta { records[s].meta }
    @inline(__always) func incarnation(_ s: Int) -> UInt64 { records[s].incarnation }
    @inline(__always) func heard(_ s: Int) -> UInt64 { records[s].heard }

    mutating func reserve(_ n: Int) {
        if wide { full.reserveCapacity(n) } else { v4.reserveCapacity(n) }
        records.reserveCapacity(n)
    }

    @inline(__always)
    func address(_ s: Int) -> IPAddress { wide ? full[s] : IPAddress(v4: v4[s]) }

    /// Whether slot `s` holds `a`: for IPv4 keys a 4-byte compare.
    @inline(__always)
    func holds(_ s: Int, _ a: IPAddress) -> Bool {
        if wide { return full[s] == a }
        return a.isIPv4 && v4[s] == a.v4Value
    }

    func node(_ s: Int) -> Node {
        let r = records[s]
        let m = r.meta
        let x = m.hasExtras ? extras[Int32(s)] : nil
        return Node(
            address: address(s), id: m.id, preferredID: m.preferredID, explicitID: m.explicitID,
            aliases: x?.aliases ?? [], state: m.state, incarnation: r.incarnation, lastHeard: Instant(nanos: r.heard),
            hops: m.hops, heartbeatPort: m.heartbeatPort, capabilities: x?.capabilities ?? [])
    }

    func brief(_ s: Int) -> NodeBrief {
        let r = records[s]
        return NodeBrief(
            address: address(s), id: r.meta.id, state: r.meta.state, incarnation: r.incarnation,
            lastHeard: Instant(nanos: r.heard), hops: r.meta.hops, heartbeatPort: r.meta.heartbeatPort)
    }

    func aliases(_ s: Int) -> [Alias] { meta(s).hasExtras ? extras[Int32(s)]?.aliases ?? [] : [] }

    /// Slots whose node has aliases (few: multi-homed and routed hosts).
    var slotsWithExtras: [Int] { extras.keys.map { Int($0) }.sorted() }

    mutating func append(_ n: Node) {
        if !wide && !n.address.isIPv4 { widen() }
        if wide { full.append(n.address) } else { v4.append(n.address.v4Value) }
        records.append(Record(incarnation: n.incarnation, heard: n.lastHeard.nanos, meta: Meta(n)))
        if records[records.count - 1].meta.hasExtras {
            extras[Int32(records.count - 1)] = Extras(aliases: n.aliases, capabilities: n.capabilities)
        }
    }

    /// Writes every field of slot `s` but its address (which never changes in place).
    mutating func set(_ s: Int, _ n: Node) {
        records[s] = Record(incarnation: n.incarnation, heard: n.lastHeard.nanos, meta: Meta(n))
        if records[s].meta.hasExtras {
            extras[Int32(s)] = Extras(aliases: n.aliases, capabilities: n.capabilities)
        } else if !extras.isEmpty {
            extras[Int32(s)] = nil
        }
    }

    @inline(__always) mutating func setHeard(_ s: Int, _ t: UInt64) { records[s].heard = t }
    @inline(__always) mutating func setID(_ s: Int, _ id: NodeID) { records[s].meta.setID(id) }
    @inline(__always) mutating func setState(_ s: Int, _ st: NodeState) { records[s].meta.setState(st) }

    /// Moves the last slot into `s` (whose node is being removed) and drops the last slot.
    mutating func moveLast(to s: Int) {
        let last = count - 1
        if s != last {
            if wide { full[s] = full[last] } else { v4[s] = v4[last] }
            records[s] = records[last]
            if !extras.isEmpty { extras[Int32(s)] = extras[Int32(last)] }
        }
        if wide { full.removeLast() } else { v4.removeLast() }
        records.removeLast()
        if !extras.isEmpty { extras[Int32(last)] = nil }
    }

    private mutating func widen() {
        full = v4.map { IPAddress(v4: $0) }
        full.reserveCapacity(v4.capacity)
        v4 = []
        wide = true
    }
}

/// Address → slot, by open addressing with linear probing over `[UInt16]` (0xFFFF = empty; a map
/// holds at most 65,535 nodes, slots 0...65534). The key is checked against the columns, so a table
/// entry costs 2 bytes (about 3.3 bytes per node at a load of at most 3/4); deletion shifts back
/// (no tombstones). The hash is fixed (`NodeMap.addressHash`): the same on every run.
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
    private func home(_ a: IPAddress) -> Int { Int(truncatingIfNeeded: NodeMap.addressHash(a)) & mask }

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
