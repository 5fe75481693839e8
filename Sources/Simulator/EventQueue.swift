/// A simulator event: plain data (no references), so the heap moves 32-byte values only.
struct SimEvent {
    enum Kind: UInt8 {
        /// Node `a` starts (a fresh process).
        case start
        /// Node `a`'s pending tick (stale unless `time` equals the node's armed tick time).
        case tick
        /// Unicast payload `c` from node `b` to node `a`.
        case unicast
        /// Multicast record `a`, latency slice `b`: deliver to the receivers that drew it.
        case fanout
        /// Node `a` resumes after a pause.
        case resume
        /// Scheduled scenario action `a`.
        case action
        /// The next random process pause.
        case pause
    }

    var time: UInt64
    var seq: UInt64
    var kind: Kind
    var a: Int32
    var b: Int32
    var c: Int32

    @inline(__always)
    static func before(_ x: SimEvent, _ y: SimEvent) -> Bool {
        x.time < y.time || (x.time == y.time && x.seq < y.seq)
    }
}

/// Binary min-heap of events keyed by (time, sequence): equal times run in the order they were
/// scheduled, which makes a run a pure function of its seed.
struct EventQueue {
    private(set) var items: [SimEvent] = []
    private var nextSeq: UInt64 = 0

    var count: Int { items.count }
    var isEmpty: Bool { items.isEmpty }
    var peekTime: UInt64? { items.first?.time }

    mutating func push(_ time: UInt64, _ kind: SimEvent.Kind, _ a: Int32, _ b: Int32 = 0, _ c: Int32 = 0) {
        let e = SimEvent(time: time, seq: nextSeq, kind: kind, a: a, b: b, c: c)
        nextSeq &+= 1
        items.append(e)
        var i = items.count - 1
        items.withUnsafeMutableBufferPointer { h in
            while i > 0 {
                let p = (i - 1) >> 1
                guard SimEvent.before(e, h[p]) else { break }
                h[i] = h[p]
                i = p
            }
            h[i] = e
        }
    }

    mutating func pop() -> SimEvent? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        let n = items.count
        guard n > 0 else { return top }
        items.withUnsafeMutableBufferPointer { h in
            var i = 0
            while true {
                let l = 2 * i + 1
                if l >= n { break }
                let r = l + 1
                let c = r < n && SimEvent.before(h[r], h[l]) ? r : l
                guard SimEvent.before(h[c], last) else { break }
                h[i] = h[c]
                i = c
            }
            h[i] = last
        }
        return top
    }
}
