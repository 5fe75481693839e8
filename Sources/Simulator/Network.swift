#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Cluster
import Detector
import Discovery
import NodeMap
import Wire
import CPrefetch

/// The network model: events in virtual time, datagrams with latency, loss, duplication and
/// socket buffers that overflow during pauses, delivered to the very `ClusterNode`s the daemon runs.
extension Simulator {
    // MARK: Events

    func handle(_ e: SimEvent) {
        switch e.kind {
        case .start:
            startsPending -= 1
            let i = Int(e.a)
            if status[i] == .notStarted { launch(i) }

        case .tick:
            let i = Int(e.a)
            guard armed[i] == e.time else { return }
            armed[i] = .max
            guard status[i] == .running, pausedUntil[i] <= now, let slot = slots[i] else { return }
            if now >= slot.node.nextDeadlineInPlace().nanos {
                trace(1, UInt64(i))
                if diagnose?.observer == i { lastInput = "tick" }
                if overflowed[i] > 0 {
                    slot.node.localLoss(dropped: overflowed[i], now: Instant(nanos: now))
                    overflowed[i] = 0
                }
                let effects = slot.node.tick(now: Instant(nanos: now))
                afterInput(i, effects)
            } else {
                rearm(i, slot)
            }

        case .unicast:
            let bytes = payloads[Int(e.c)]
            payloads[Int(e.c)] = []
            freePayloads.append(e.c)
            deliver(bytes, to: Int(e.a), from: Int(e.b & Int32.max), heartbeat: e.b < 0, tag: UInt64(e.c))

        case .fanout:
            let r = Int(e.a)
            let s = Int(e.b)
            let bytes = fanouts[r].bytes
            let from = Int(fanouts[r].from)
            let n = fanouts[r].receivers[s].count
            // Decoded once for every receiver (a datagram that does not decode goes to each as bytes,
            // and each counts its drop).
            let decoded = try? Message.decode(bytes)
            let origin = decoded?.header.origin
            // An announce mostly repeats what a map holds, and its receiver then reads only the
            // node's `repeatBytes`; a join changes the map (`changeRanges`); anything else (a
            // death notice, a leave) may read all of the node but its settings.
            let lines: NodeLines
            switch decoded?.header.type {
            case .announce?: lines = .repeated
            case .join?: lines = .change
            default: lines = .core
            }
            for k in 0..<n {
                if let o = origin { prefetchReceivers(r, s, k, n, o, lines: lines) }
                deliver(bytes, decoded: decoded, to: Int(fanouts[r].receivers[s][k]), from: from, heartbeat: false, tag: UInt64(r))
            }
            fanouts[r].receivers[s].removeAll(keepingCapacity: true)
            fanouts[r].pending -= 1
            if fanouts[r].pending == 0 {
                fanouts[r].bytes = []
                freeFanouts.append(Int32(r))
            }

        case .resume:
            let i = Int(e.a)
            guard status[i] == .running, pausedUntil[i] == e.time, let slot = slots[i] else { return }
            pausedUntil[i] = 0
            trace(12, UInt64(i))
            // As an event loop does after a stall: read what queued in the sockets, then run late timers.
            let inputs = held[i]
            held[i] = []
            heldBytes[i] = (0, 0)
            for q in inputs {
                guard status[i] == .running else { break }
                receive(q.bytes, at: i)
            }
            if status[i] == .running { rearm(i, slot) }

        case .action:
            apply(actions[Int(e.a)])

        case .pause:
            guard let p = config.pauses else { return }
            let i = Int(scenarioRNG.next() % UInt64(count))
            pause(i, for: p.length)
            schedulePause(p, from: now)
        }
    }

    /// A fanout walks thousands of receivers, each with its own node and map in memory no cache
    /// holds; delivering to one reads its node, then its map's index entry for the sender, then the
    /// record that entry points to: misses that follow one another. While it delivers to receiver
    /// k, it asks for receiver k + 8's node (the lines `lines` says the input will read), k +
    /// 4's index entry and k + 2's record (or the lines an insert writes), so that the
    /// misses of several receivers overlap (a 3,000-node start: 63 s without, 45 s with). Hints
    /// only: the deliveries and their order are as without them, and so is the trace.
    @inline(__always)
    func prefetchReceivers(_ r: Int, _ s: Int, _ k: Int, _ n: Int, _ origin: IPAddress, lines: NodeLines) {
        if k + Self.slotAhead < n {
            let j = Int(fanouts[r].receivers[s][k + Self.slotAhead])
            switch lines {
            case .repeated:
                prefetchSlot(j, Self.repeatSlotRange)
            case .change:
                prefetchSlot(j, Self.changeSlotRanges.0)
                prefetchSlot(j, Self.changeSlotRanges.1)
            case .core:
                prefetchSlot(j, Self.coreSlotRange)
            }
        }
        if k + Self.indexAhead < n, let slot = slots[Int(fanouts[r].receivers[s][k + Self.indexAhead])] {
            slot.node.prefetch(origin, step: 0)
        }
        if k + Self.recordAhead < n, let slot = slots[Int(fanouts[r].receivers[s][k + Self.recordAhead])] {
            // News to this receiver (its map will insert the sender): the input reads the node's
            // `changeRanges` too (discovery's news count, the detector's ring), asked for only now.
            if slot.node.prefetch(origin, step: 1) && lines == .repeated {
                let j = Int(fanouts[r].receivers[s][k + Self.recordAhead])
                prefetchSlot(j, Self.changeSlotRanges.0)
                prefetchSlot(j, Self.changeSlotRanges.1)
            }
        }
    }

    /// Which of a receiver's lines a fanout asks for: see `ClusterNode.repeatBytes` and `changeRanges`.
    enum NodeLines { case repeated, change, core }

    static let slotAhead = 8
    static let indexAhead = 4
    static let recordAhead = 2
    /// A slot object's header is 16 bytes (a retain writes it); the node follows it. The ranges that
    /// start at the node's first byte include the header.
    static let repeatSlotRange = 0..<16 + ClusterNode.repeatBytes
    static let changeSlotRanges = (
        0..<16 + ClusterNode.changeRanges.0.upperBound,
        16 + ClusterNode.changeRanges.1.lowerBound..<16 + ClusterNode.changeRanges.1.upperBound
    )
    /// The slot's header and the node but its settings.
    static let coreSlotRange = 0..<16 + MemoryLayout<ClusterNode>.offset(of: \ClusterNode.config)!

    /// Asks for the lines of slot `j` that hold bytes `range` without touching it (reading the
    /// reference would retain it, a write to its first line: the very miss this avoids). Asking for
    /// the map's lines first was measured no faster than one pass in order.
    @inline(__always)
    func prefetchSlot(_ j: Int, _ range: Range<Int>) {
        slots.withUnsafeBufferPointer { b in
            let bits = UnsafeRawPointer(b.baseAddress!).load(fromByteOffset: j &* MemoryLayout<Slot?>.stride, as: UInt.self)
            guard bits != 0 else { return }
            // Lines are 64-byte aligned in memory; the slot is only 16-byte aligned.
            var line = (bits &+ UInt(range.lowerBound)) & ~63
            let end = bits &+ UInt(range.upperBound)
            while line < end {
                discd_prefetch(UnsafeRawPointer(bitPattern: line))
                line &+= 64
            }
        }
    }

    @inline(__always)
    func rearm(_ i: Int, _ slot: Slot) {
        // A deadline already passed is due now; a tick already queued for that time (armed) does.
        let t = Swift.max(slot.node.nextDeadlineInPlace().nanos, now)
        if t < armed[i] {
            armed[i] = t
            queue.push(t, .tick, Int32(i))
        }
    }

    func deliver(_ bytes: [UInt8], decoded: Message? = nil, to j: Int, from i: Int, heartbeat: Bool, tag: UInt64) {
        guard status[j] == .running else {
            traffic.toDownNode += 1
            return
        }
        if side[j] != side[i] {
            traffic.partitionDrops += 1
            return
        }
        if pausedUntil[j] > now {
            let cost = bytes.count + Self.skbOverhead
            if heartbeat {
                guard heldBytes[j].heartbeat + cost <= config.socketBuffer else {
                    traffic.bufferOverflows += 1
                    overflowed[j] += 1
                    return
                }
                heldBytes[j].heartbeat += cost
            } else {
                guard heldBytes[j].discovery + cost <= config.socketBuffer else {
                    traffic.bufferOverflows += 1
                    overflowed[j] += 1
                    return
                }
                heldBytes[j].discovery += cost
            }
            held[j].append(Queued(bytes: bytes, heartbeatSocket: heartbeat))
            return
        }
        trace(2, UInt64(j) << 32 ^ tag)
        if diagnose?.observer == j {
            lastInput = "type \(bytes.count > 3 ? bytes[3] : 0) from node \(i)"
        }
        receive(bytes, decoded: decoded, at: j)
    }

    @inline(__always)
    func receive(_ bytes: [UInt8], decoded: Message? = nil, at j: Int) {
        traffic.delivered += 1
        traffic.deliveredBytes += bytes.count
        let slot = slots[j]!
        let effects: [Effect]
        if let m = decoded {
            effects = slot.node.receive(m, bytes: bytes, interface: 0, now: Instant(nanos: now))
        } else {
            effects = slot.node.receive(bytes, interface: 0, now: Instant(nanos: now))
        }
        // A repeated announce moved no timer (nothing to rearm) and changed no membership (nothing
        // for the oracle but its convergence check): only the time its sender was heard.
        if effects.isEmpty && slot.node.lastInputWasRepeat && diagnose == nil {
            verifyIfConverged()
            return
        }
        afterInput(j, effects)
    }

    // MARK: Outputs

    func afterInput(_ i: Int, _ effects: [Effect]) {
        if let d = diagnose { diagnoseInput(i, effects, d) }
        if !effects.isEmpty { send(effects, from: i) }
        guard status[i] == .running, let slot = slots[i] else { return }
        rearm(i, slot)
        watch(i, slot)
    }

    func send(_ effects: [Effect], from i: Int) {
        for e in effects {
            switch e {
            case .multicast(let bytes, let except):
                // One interface: a relay "to every interface but 0" goes nowhere.
                if except == 0 { continue }
                count(bytes)
                traffic.multicasts += 1
                multicast(bytes, from: i)
            case .unicast(let bytes, let to):
                count(bytes)
                traffic.unicasts += 1
                unicast(bytes, from: i, to: to, heartbeat: false)
            case .heartbeat(let bytes, let to, let port):
                count(bytes)
                traffic.heartbeats += 1
                guard port == config.heartbeatPort else {
                    traffic.unroutable += 1
                    continue
                }
                unicast(bytes, from: i, to: to, heartbeat: true)
            case .event(let e):
                logSink?(now, i, e)
            }
        }
    }

    @inline(__always)
    func count(_ bytes: [UInt8]) {
        traffic.sent += 1
        traffic.sentBytes += bytes.count
        let t = bytes.count > 3 && Int(bytes[3]) < TrafficCounters.typeSlots ? Int(bytes[3]) : 0
        traffic.sentByType[t] += 1
        traffic.sentBytesByType[t] += bytes.count
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        trace(3, h)
    }

    func unicast(_ bytes: [UInt8], from i: Int, to: IPAddress, heartbeat: Bool) {
        guard let j = indexOf[to] else {
            traffic.unroutable += 1
            return
        }
        var copies = 1
        if dupThreshold > 0, netRNG.next() >> 32 < dupThreshold {
            copies = 2
            traffic.duplicated += 1
        }
        for _ in 0..<copies {
            let r = netRNG.next()
            if r & 0xFFFF_FFFF < lossThreshold {
                traffic.lost += 1
                continue
            }
            let s = config.latency.slice(r >> 32)
            let w = config.latency.sliceWidth
            let delay = config.latency.sliceStart[s] + (w > 0 ? netRNG.next() % w : 0)
            let p: Int32
            if let f = freePayloads.popLast() {
                p = f
                payloads[Int(f)] = bytes
            } else {
                p = Int32(payloads.count)
                payloads.append(bytes)
            }
            queue.push(now + delay, .unicast, j, Int32(i) | (heartbeat ? Int32.min : 0), p)
        }
    }

    func multicast(_ bytes: [UInt8], from i: Int) {
        let k = config.latency.sliceCount
        let r: Int
        if let f = freeFanouts.popLast() {
            r = Int(f)
        } else {
            r = fanouts.count
            fanouts.append(Fanout(receivers: Array(repeating: [], count: k)))
        }
        fanouts[r].bytes = bytes
        fanouts[r].from = Int32(i)
        let loss = lossThreshold
        let dup = dupThreshold
        let latency = config.latency
        for j in 0..<count where j != i && status[j] == .running {
            let x = netRNG.next()
            if x & 0xFFFF_FFFF < loss {
                traffic.lost += 1
                continue
            }
            fanouts[r].receivers[latency.slice(x >> 32)].append(Int32(j))
            if dup > 0, netRNG.next() >> 32 < dup {
                traffic.duplicated += 1
                fanouts[r].receivers[latency.slice(netRNG.next() >> 32)].append(Int32(j))
            }
        }
        var pending = 0
        for s in 0..<k where !fanouts[r].receivers[s].isEmpty {
            queue.push(now + latency.midpoint(s), .fanout, Int32(r), Int32(s))
            pending += 1
        }
        fanouts[r].pending = pending
        if pending == 0 {
            fanouts[r].bytes = []
            freeFanouts.append(Int32(r))
        }
    }
}
