import NodeMap

extension Message {
    /// Encodes the message. With `authenticated` set in the flags, room for a 16-byte tag is left
    /// zeroed at the end; the key layer fills it (over the datagram with the hops byte zeroed).
    public func encode() throws -> [UInt8] {
        let name = Array(header.cluster.utf8)
        guard !name.isEmpty, name.count <= Wire.maxClusterName else { throw EncodeError.clusterNameTooLong }
        if case .deaths(let ns) = body, ns.isEmpty || ns.count > Wire.deathsPerDatagram {
            throw EncodeError.deathNoticeCount(ns.count)
        }
        var w = ByteWriter(capacity: 128)
        w.u16(Wire.magic)
        w.u8(Wire.version)
        w.u8(body.type.rawValue)
        w.u8(header.flags.rawValue)
        w.u8(header.hops)
        w.u8(UInt8(name.count))
        w.u8(0)
        w.u16(header.senderID)
        w.u16(0)  // body length, patched below
        w.u64(header.incarnation)
        w.u32(header.messageID)
        w.u32(header.keyID)
        w.u64(header.replayCounter)
        w.address(header.origin)
        w.raw(name)
        let bodyStart = w.count
        Self.encodeBody(body, &w)
        let bodyLen = w.count - bodyStart
        w.patch16(at: 10, UInt16(truncatingIfNeeded: bodyLen))
        if header.flags.contains(.authenticated) { w.raw([UInt8](repeating: 0, count: Wire.tagLength)) }
        guard w.count <= Wire.maxDatagram, bodyLen <= 0xFFFF else { throw EncodeError.tooLarge(w.count) }
        return w.bytes
    }

    static func writeAliases(_ a: [Alias], _ w: inout ByteWriter) {
        w.u8(UInt8(min(a.count, 32)))
        for x in a.prefix(32) {
            w.address(x.address)
            w.u8(x.source.rawValue)
        }
    }

    static func writeEntries(_ entries: [SyncEntry], _ w: inout ByteWriter) {
        w.u16(UInt16(truncatingIfNeeded: entries.count))
        for e in entries {
            w.address(e.address)
            w.u16(e.preferredID)
            w.u8(e.explicitID ? 1 : 0)
            w.u8(e.state.rawValue)
            w.u64(e.incarnation)
            w.u16(e.heartbeatPort)
            w.u8(e.hops)
            w.u32(e.ageMillis)
            writeAliases(e.aliases, &w)
        }
    }

    static func readEntries(_ r: inout ByteReader) throws -> [SyncEntry] {
        let n = Int(try r.u16())
        guard n <= Wire.maxDatagram / SyncEntry.minEncodedSize else { throw DecodeError.malformedBody("\(n) entries") }
        var entries: [SyncEntry] = []
        entries.reserveCapacity(n)
        for _ in 0..<n {
            let a = try r.address()
            let pref = try r.u16()
            let flags = try r.u8()
            guard let st = NodeState(rawValue: try r.u8()) else { throw DecodeError.malformedBody("state") }
            let inc = try r.u64()
            let port = try r.u16()
            let hops = try r.u8()
            let age = try r.u32()
            let al = try readAliases(&r)
            guard flags & ~1 == 0 else { throw DecodeError.malformedBody("entry flags") }
            entries.append(
                SyncEntry(
                    address: a, preferredID: pref, explicitID: flags & 1 != 0, state: st, incarnation: inc,
                    heartbeatPort: port, aliases: al, hops: hops, ageMillis: age))
        }
        return entries
    }

    static func encodeBody(_ b: Body, _ w: inout ByteWriter) {
        switch b {
        case .announce(let i), .join(let i):
            w.u16(i.heartbeatPort)
            w.u32(i.announceIntervalMillis)
            writeAliases(i.aliases, &w)
            w.u8(UInt8(min(i.capabilities.count, 8)))
            for c in i.capabilities.prefix(8) { CapabilityCodec.write(c, to: &w) }
        case .leave, .watch:
            break
        case .mapSync(let part, let parts, let entries):
            w.u16(part)
            w.u16(parts)
            writeEntries(entries, &w)
        case .heartbeat(let seq, let period, let members, let digest):
            w.u32(seq)
            w.u16(period)
            w.u16(members)
            w.u64(digest)
        case .syncRequest(let r):
            w.u32(r.session)
            w.u32(r.salt)
            w.u8(r.flags.rawValue)
            w.raw(r.sums)
        case .syncEntries(let e):
            w.u32(e.session)
            w.u8(e.flags.rawValue)
            w.u16(UInt16(truncatingIfNeeded: e.covered.count))
            for k in e.covered { w.u16(k) }
            writeEntries(e.entries, &w)
        case .offer(let members, let digest):
            w.u16(members)
            w.u64(digest)
        case .probeRequest(let t, let inc, let nonce):
            w.address(t)
            w.u64(inc)
            w.u32(nonce)
        case .probe(let r, let nonce):
            w.address(r)
            w.u32(nonce)
        case .probeAck(let t, let inc, let nonce):
            w.address(t)
            w.u64(inc)
            w.u32(nonce)
        case .suspect(let t, let inc):
            w.address(t)
            w.u64(inc)
        case .dead(let t, let inc, let id):
            w.address(t)
            w.u64(inc)
            w.u16(id)
        case .deaths(let ns):
            w.u8(UInt8(truncatingIfNeeded: ns.count))
            for n in ns {
                w.address(n.target)
                w.u64(n.targetIncarnation)
                w.u16(n.targetID)
            }
        case .processExit(let p):
            w.address(p.node)
            w.u32(p.pid)
            w.u64(p.startTime)
            w.u32(UInt32(bitPattern: p.status))
            w.u16(p.tag)
            w.u8(p.source.rawValue)
            // At most 64 bytes, cut at a character boundary so that the decoder's UTF-8 check passes.
            var n = Array(p.name.utf8.prefix(64))
            while String(validating: n, as: UTF8.self) == nil { n.removeLast() }
            w.u8(UInt8(n.count))
            w.raw(n)
        }
    }

    /// Decodes and validates a datagram. Never traps: every malformed input is a `DecodeError`.
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> Message {
        guard bytes.count >= Wire.fixedHeader else { throw .tooShort(bytes.count) }
        guard bytes.count <= Wire.maxDatagram else { throw .tooLong(bytes.count) }
        var r = ByteReader(bytes)
        do {
            guard try r.u16() == Wire.magic else { throw DecodeError.badMagic }
            let v = try r.u8()
            guard v == Wire.version else { throw DecodeError.unsupportedVersion(v) }
            let t = try r.u8()
            guard let type = MessageType(rawValue: t) else { throw DecodeError.unknownType(t) }
            let f = HeaderFlags(rawValue: try r.u8())
            guard HeaderFlags.known.isSuperset(of: f) else { throw DecodeError.unknownFlags(f.rawValue) }
            let hops = try r.u8()
            let nameLen = Int(try r.u8())
            _ = try r.u8()
            let sender = try r.u16()
            let bodyLen = Int(try r.u16())
            let inc = try r.u64()
            let mid = try r.u32()
            let key = try r.u32()
            let replay = try r.u64()
            let origin = try r.address()
            guard nameLen >= 1, nameLen <= Wire.maxClusterName else { throw DecodeError.badClusterName }
            let tag = f.contains(.authenticated) ? Wire.tagLength : 0
            guard Wire.fixedHeader + nameLen + bodyLen + tag == bytes.count else {
                throw f.contains(.authenticated) && Wire.fixedHeader + nameLen + bodyLen == bytes.count
                    ? DecodeError.missingTag : DecodeError.lengthMismatch
            }
            let nameBytes = try r.raw(nameLen)
            let cluster = nameBytes.withUnsafeBufferPointer { String(decoding: $0, as: UTF8.self) }
            // Decoding replaces invalid UTF-8; the name must come out byte for byte.
            guard cluster.utf8.elementsEqual(nameBytes) else { throw DecodeError.badClusterName }
            let header = Header(
                type: type, flags: f, hops: hops, cluster: cluster, senderID: sender, incarnation: inc, messageID: mid,
                keyID: key, replayCounter: replay, origin: origin)
            var br = ByteReader(bytes, offset: r.offset, end: r.offset + bodyLen)
            let body = try decodeBody(type, &br)
            guard br.remaining == 0 else { throw DecodeError.malformedBody("\(br.remaining) trailing bytes") }
            return Message(header: header, body: body)
        } catch let e as DecodeError {
            throw e
        } catch {
            throw .malformedBody("field runs past the body")
        }
    }

    static func readAliases(_ r: inout ByteReader) throws -> [Alias] {
        let n = Int(try r.u8())
        guard n <= 32 else { throw DecodeError.malformedBody("\(n) aliases (at most 32)") }
        var out: [Alias] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            let a = try r.address()
            guard let s = AliasSource(rawValue: try r.u8()) else { throw DecodeError.malformedBody("alias source") }
            out.append(Alias(a, source: s))
        }
        return out
    }

    static func decodeBody(_ t: MessageType, _ r: inout ByteReader) throws -> Body {
        switch t {
        case .announce, .join:
            let port = try r.u16()
            let interval = try r.u32()
            let aliases = try readAliases(&r)
            let nc = Int(try r.u8())
            guard nc <= 8 else { throw DecodeError.malformedBody("\(nc) capabilities (at most 8)") }
            var caps: [Capability] = []
            for _ in 0..<nc { caps.append(try CapabilityCodec.read(&r)) }
            let info = NodeInfo(aliases: aliases, heartbeatPort: port, announceIntervalMillis: interval, capabilities: caps)
            return t == .announce ? .announce(info) : .join(info)
        case .leave: return .leave
        case .watch: return .watch
        case .mapSync:
            let part = try r.u16()
            let parts = try r.u16()
            guard parts >= 1, part < parts else { throw DecodeError.malformedBody("part \(part) of \(parts)") }
            return .mapSync(part: part, parts: parts, entries: try readEntries(&r))
        case .heartbeat:
            return .heartbeat(sequence: try r.u32(), periodMillis: try r.u16(), members: try r.u16(), digest: try r.u64())
        case .syncRequest:
            let session = try r.u32()
            let salt = try r.u32()
            let f = SyncRequest.Flags(rawValue: try r.u8())
            guard SyncRequest.Flags.known.isSuperset(of: f) else { throw DecodeError.malformedBody("sync request flags") }
            let sums = Array(try r.raw(NodeMap.digestBuckets))
            return .syncRequest(SyncRequest(session: session, salt: salt, flags: f, sums: sums))
        case .syncEntries:
            let session = try r.u32()
            let f = SyncEntries.Flags(rawValue: try r.u8())
            guard SyncEntries.Flags.known.isSuperset(of: f) else { throw DecodeError.malformedBody("sync entries flags") }
            let nc = Int(try r.u16())
            guard nc <= NodeMap.digestBuckets else { throw DecodeError.malformedBody("\(nc) buckets") }
            var covered: [UInt16] = []
            covered.reserveCapacity(nc)
            for _ in 0..<nc {
                let k = try r.u16()
                guard Int(k) < NodeMap.digestBuckets else { throw DecodeError.malformedBody("bucket \(k)") }
                covered.append(k)
            }
            return .syncEntries(SyncEntries(session: session, flags: f, covered: covered, entries: try readEntries(&r)))
        case .offer:
            return .offer(members: try r.u16(), digest: try r.u64())
        case .probeRequest:
            return .probeRequest(target: try r.address(), targetIncarnation: try r.u64(), nonce: try r.u32())
        case .probe:
            return .probe(requester: try r.address(), nonce: try r.u32())
        case .probeAck:
            return .probeAck(target: try r.address(), targetIncarnation: try r.u64(), nonce: try r.u32())
        case .suspect:
            return .suspect(target: try r.address(), targetIncarnation: try r.u64())
        case .dead:
            return .dead(target: try r.address(), targetIncarnation: try r.u64(), targetID: try r.u16())
        case .deaths:
            let n = Int(try r.u8())
            guard n >= 1, n <= Wire.deathsPerDatagram else { throw DecodeError.malformedBody("\(n) death notices") }
            var ns: [DeathNotice] = []
            ns.reserveCapacity(n)
            for _ in 0..<n {
                ns.append(DeathNotice(target: try r.address(), targetIncarnation: try r.u64(), targetID: try r.u16()))
            }
            return .deaths(ns)
        case .processExit:
            let node = try r.address()
            let pid = try r.u32()
            let st = try r.u64()
            let status = Int32(bitPattern: try r.u32())
            let tag = try r.u16()
            let sv = try r.u8()
            guard let source = ProcessExit.Source(rawValue: sv) else { throw DecodeError.malformedBody("process exit source \(sv)") }
            let nl = Int(try r.u8())
            guard nl <= 64 else { throw DecodeError.malformedBody("process name of \(nl) bytes") }
            guard let name = String(validating: try r.raw(nl), as: UTF8.self) else {
                throw DecodeError.malformedBody("process name is not UTF-8")
            }
            return .processExit(ProcessExit(node: node, pid: pid, startTime: st, status: status, tag: tag, source: source, name: name))
        }
    }

    /// Room left for map-sync entries in one datagram for a cluster name of `nameLength` bytes.
    public static func mapSyncCapacity(nameLength: Int) -> Int {
        Wire.maxDatagram - Wire.fixedHeader - nameLength - 6 - Wire.tagLength
    }

    /// Room for a `syncEntries` body (covered buckets and entries) with the largest header and a tag.
    public static let syncEntriesCapacity = Wire.maxDatagram - Wire.fixedHeader - Wire.maxClusterName - Wire.tagLength
}

extension Message {
    /// The origin field of a datagram's header, read without decoding or checking anything else
    /// (nil when the datagram is shorter than the fixed header). For the shell's bookkeeping only.
    public static func peekOrigin(_ bytes: [UInt8]) -> IPAddress? {
        guard bytes.count >= Wire.fixedHeader else { return nil }
        var r = ByteReader(bytes, offset: Wire.fixedHeader - 16, end: Wire.fixedHeader)
        return try? r.address()
    }
}
