import Events

/// The control socket's requests (docs/EVENTS.md, "The control socket"): one JSON object per line.
public enum ControlRequest: Equatable, Sendable {
    case subscribe(filter: EventFilter, since: UInt64?, text: Bool)
    /// Watch process `pid` with `tag`; `notify`: write `{"exited":PID,"status":S}` to this
    /// connection once its exit is known (the `discd watch -- CMD` client waits for it).
    case watch(pid: Int32, tag: UInt16, notify: Bool)
    /// The kernel-module link's state; `attach` false lets go of /dev/heartbeat (so the modules can
    /// be unloaded under a running daemon), true takes it again. Changing it needs root.
    case kernel(attach: Bool?)

    public struct Invalid: Error, Equatable, Sendable {
        public let reason: String
        public init(reason: String) { self.reason = reason }
    }

    /// The largest request line; longer ones are refused and the connection closed.
    public static let maxLine = 4096

    public static func parse(_ line: String) throws(Invalid) -> ControlRequest {
        guard let obj = MiniJSON.object(line) else { throw Invalid(reason: "not a JSON object") }
        guard case .string(let op)? = obj["op"] else { throw Invalid(reason: "no op") }
        switch op {
        case "subscribe":
            var f = EventFilter()
            if let v = obj["spaces"] {
                guard case .strings(let a) = v else { throw Invalid(reason: "spaces must be an array of strings") }
                for s in a where EventSpace(rawValue: s) == nil { throw Invalid(reason: "unknown space \(s)") }
                f.spaces = Set(a)
            }
            if let v = obj["names"] {
                guard case .strings(let a) = v else { throw Invalid(reason: "names must be an array of strings") }
                f.names = Set(a)
            }
            if let v = obj["severity"] {
                guard case .string(let s) = v, let sev = Severity(text: s) else {
                    throw Invalid(reason: "severity must be INFO, WARNING, ERROR or FATAL")
                }
                f.minSeverity = sev
            }
            var since: UInt64?
            if let v = obj["since"] {
                guard case .uint(let n) = v else { throw Invalid(reason: "since must be a non-negative integer") }
                since = n
            }
            var text = false
            if let v = obj["format"] {
                guard case .string(let fmt) = v, fmt == "json" || fmt == "text" else { throw Invalid(reason: "format must be json or text") }
                text = fmt == "text"
            }
            return .subscribe(filter: f, since: since, text: text)
        case "watch":
            guard case .uint(let pid)? = obj["pid"], pid >= 1, pid <= UInt64(Int32.max) else {
                throw Invalid(reason: "pid must be a process ID")
            }
            var tag: UInt16 = 0
            if let v = obj["tag"] {
                guard case .uint(let t) = v, t <= UInt64(UInt16.max) else { throw Invalid(reason: "tag must be 0-65535") }
                tag = UInt16(t)
            }
            var notify = false
            if let v = obj["notify"] {
                guard case .bool(let b) = v else { throw Invalid(reason: "notify must be true or false") }
                notify = b
            }
            return .watch(pid: Int32(pid), tag: tag, notify: notify)
        case "kernel":
            var attach: Bool?
            if let v = obj["attach"] {
                guard case .bool(let b) = v else { throw Invalid(reason: "attach must be true or false") }
                attach = b
            }
            return .kernel(attach: attach)
        default:
            throw Invalid(reason: "unknown op \(op)")
        }
    }
}

/// A deliberately small JSON reader for control requests: one flat object whose values are strings,
/// non-negative integers, booleans or arrays of strings. Anything else is refused.
public enum MiniJSON {
    public enum Value: Equatable, Sendable {
        case string(String), uint(UInt64), bool(Bool), strings([String])
    }

    public static func object(_ text: String) -> [String: Value]? {
        var p = Parser(Array(text.utf8))
        return p.object()
    }

    struct Parser {
        let b: [UInt8]
        var i = 0
        init(_ b: [UInt8]) { self.b = b }

        mutating func ws() { while i < b.count, b[i] == 32 || b[i] == 9 || b[i] == 13 || b[i] == 10 { i += 1 } }
        mutating func eat(_ c: UInt8) -> Bool {
            ws()
            guard i < b.count, b[i] == c else { return false }
            i += 1
            return true
        }

        mutating func object() -> [String: Value]? {
            guard eat(UInt8(ascii: "{")) else { return nil }
            var out: [String: Value] = [:]
            if eat(UInt8(ascii: "}")) { return end(out) }
            for _ in 0..<64 {
                guard let k = string(), eat(UInt8(ascii: ":")), let v = value(), out[k] == nil else { return nil }
                out[k] = v
                if eat(UInt8(ascii: ",")) { continue }
                guard eat(UInt8(ascii: "}")) else { return nil }
                return end(out)
            }
            return nil
        }

        mutating func end(_ o: [String: Value]) -> [String: Value]? {
            ws()
            return i == b.count ? o : nil
        }

        mutating func value() -> Value? {
            ws()
            guard i < b.count else { return nil }
            switch b[i] {
            case UInt8(ascii: "\""): return string().map { .string($0) }
            case UInt8(ascii: "["):
                i += 1
                var a: [String] = []
                if eat(UInt8(ascii: "]")) { return .strings(a) }
                for _ in 0..<64 {
                    guard let s = string() else { return nil }
                    a.append(s)
                    if eat(UInt8(ascii: ",")) { continue }
                    return eat(UInt8(ascii: "]")) ? .strings(a) : nil
                }
                return nil
            case UInt8(ascii: "t"), UInt8(ascii: "f"):
                for (word, v) in [("true", true), ("false", false)] where b[i...].starts(with: word.utf8) {
                    i += word.utf8.count
                    return .bool(v)
                }
                return nil
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                var n: UInt64 = 0
                var digits = 0
                while i < b.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b[i]) {
                    let (m, o1) = n.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(UInt64(b[i] - UInt8(ascii: "0")))
                    guard !o1, !o2, digits < 20 else { return nil }
                    n = s
                    digits += 1
                    i += 1
                }
                return .uint(n)
            default:
                return nil
            }
        }

        /// A string without escapes other than \" \\ \/ (requests need no more).
        mutating func string() -> String? {
            guard eat(UInt8(ascii: "\"")) else { return nil }
            var out: [UInt8] = []
            while i < b.count, out.count <= ControlRequest.maxLine {
                let c = b[i]
                i += 1
                switch c {
                case UInt8(ascii: "\""): return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard i < b.count, [UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/")].contains(b[i]) else { return nil }
                    out.append(b[i])
                    i += 1
                case 0..<32: return nil
                default: out.append(c)
                }
            }
            return nil
        }
    }
}
