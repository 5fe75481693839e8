/// Severity of an event; the shell drops what is below its level before any text is built.
public enum LogLevel: Int, Comparable, Sendable, CustomStringConvertible, CaseIterable {
    case debug = 0, info, notice, warning, error
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .debug: "debug"
        case .info: "info"
        case .notice: "notice"
        case .warning: "warning"
        case .error: "error"
        }
    }
}

/// A typed event of the protocol cores or the daemon: a stable dotted `name` (what the JSON log,
/// tests and the event stream key on), a level, named fields, and a sentence for people.
/// Values are cheap to make; text and JSON are built only by the shell, only for enabled levels.
public protocol Event: Sendable {
    /// Stable, dotted, lower-case: `member.state`, `detector.declared_dead`, `datagram.dropped`.
    var name: String { get }
    var level: LogLevel { get }
    /// The event's data, for JSON and for the human sentence.
    func fields(into f: inout EventFields)
    /// One line for people (the `-n` log, the journal).
    var text: String { get }
}

/// One field value of an event.
public enum FieldValue: Sendable, Equatable {
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case bool(Bool)
    case string(String)
    case strings([String])
    case null
}

/// The named fields of an event, in order.
public struct EventFields: Sendable {
    public private(set) var items: [(String, FieldValue)] = []
    public init() {}

    public mutating func add(_ key: String, _ v: FieldValue) { items.append((key, v)) }
    public mutating func add(_ key: String, _ v: String) { items.append((key, .string(v))) }
    /// An address or any other value written as its description.
    public mutating func add(_ key: String, _ v: some CustomStringConvertible) { items.append((key, .string(v.description))) }
    public mutating func add(_ key: String, _ v: (some CustomStringConvertible)?) {
        items.append((key, v.map { .string($0.description) } ?? .null))
    }
    public mutating func add(_ key: String, _ v: Int) { items.append((key, .int(Int64(v)))) }
    public mutating func add(_ key: String, _ v: UInt64) { items.append((key, .uint(v))) }
    public mutating func add(_ key: String, _ v: UInt16) { items.append((key, .uint(UInt64(v)))) }
    public mutating func add(_ key: String, _ v: Bool) { items.append((key, .bool(v))) }
    /// A duration in nanoseconds, written as milliseconds with `_ms` appended to the key.
    public mutating func add(_ key: String, duration ns: UInt64?) {
        items.append((key + "_ms", ns.map { .double(Double($0) / 1e6) } ?? .null))
    }

    public subscript(key: String) -> FieldValue? { items.first { $0.0 == key }?.1 }
}

/// The one JSON writer of the project: event lines, the status file, showmap's JSON, the
/// simulator's report.
public enum JSON {
    /// A JSON document. Objects keep their keys in the order given (callers sort when their contract
    /// says so).
    public indirect enum Value: Sendable, Equatable {
        case scalar(FieldValue)
        case array([Value])
        case object([(String, Value)])

        public static func == (a: Value, b: Value) -> Bool { render(a) == render(b) }
        public static func string(_ s: String) -> Value { .scalar(.string(s)) }
        public static func int(_ i: Int64) -> Value { .scalar(.int(i)) }
        public static func uint(_ u: UInt64) -> Value { .scalar(.uint(u)) }
        public static func bool(_ b: Bool) -> Value { .scalar(.bool(b)) }
        public static func double(_ d: Double) -> Value { .scalar(.double(d)) }
        public static let null = Value.scalar(.null)
    }

    /// `s` as a JSON string literal (quotes included).
    public static func quote(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    public static func value(_ v: FieldValue) -> String {
        switch v {
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .double(let d): return d.isFinite ? fixed(d, digits: 3) : "null"
        case .bool(let b): return b ? "true" : "false"
        case .string(let s): return quote(s)
        case .strings(let a): return "[" + a.map(quote).joined(separator: ",") + "]"
        case .null: return "null"
        }
    }

    /// `{"k":v,...}` without a newline.
    public static func object(_ items: [(String, FieldValue)]) -> String {
        "{" + items.map { quote($0.0) + ":" + value($0.1) }.joined(separator: ",") + "}"
    }

    /// A whole document, without insignificant whitespace.
    public static func render(_ v: Value) -> String {
        var out = ""
        write(v, to: &out)
        return out
    }

    private static func write(_ v: Value, to out: inout String) {
        switch v {
        case .scalar(let f): out += value(f)
        case .array(let a):
            out += "["
            for (i, x) in a.enumerated() {
                if i > 0 { out += "," }
                write(x, to: &out)
            }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, (k, x)) in o.enumerated() {
                if i > 0 { out += "," }
                out += quote(k) + ":"
                write(x, to: &out)
            }
            out += "}"
        }
    }

    /// A decimal with at most `digits` fraction digits, trailing zeros kept off ("1.5", "0.012", "3").
    public static func fixed(_ d: Double, digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let r = (d * scale).rounded() / scale
        if r == r.rounded(), abs(r) < 1e15 { return String(Int64(r)) }
        var s = String(r)
        if s.contains("e") { return s }
        while s.hasSuffix("0") { s.removeLast() }
        return s
    }
}

extension Event {
    /// The event as one JSON object: time since start (s), level, name, then its fields.
    public func jsonLine(sinceStart ns: UInt64) -> String {
        var f = EventFields()
        f.add("t", .double(Double(ns) / 1e9))
        f.add("level", level.description)
        f.add("event", name)
        fields(into: &f)
        return JSON.object(f.items)
    }
}
