import FuzzTargets
import Testing
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// The fuzz targets without libFuzzer: every built-in seed and every committed corpus file
/// (Tests/Fuzz/corpus/<target>/, where crashes found by `make fuzz` are added as regression inputs)
/// runs through its target without trapping.
@Suite struct FuzzCorpusTests {
    static let corpusRoot: String = {
        var path = #filePath
        for _ in 0..<2 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/Fuzz/corpus"
    }()

    static func files(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") { out.append(dir + "/" + name) }
        }
        return out.sorted()
    }

    static func read(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    @Test(arguments: FuzzTarget.allCases)
    func seedsAndCorpusRunWithoutTrapping(_ t: FuzzTarget) {
        #expect(!t.seeds.isEmpty)
        for s in t.seeds { t.run(s) }
        let corpus = Self.files(Self.corpusRoot + "/" + t.rawValue)
        #expect(!corpus.isEmpty, "no committed corpus for \(t.rawValue) in \(Self.corpusRoot)")
        for f in corpus { t.run(Self.read(f)) }
    }

    /// The datagram seeds hold one valid message of every type, so that the fuzzer starts inside
    /// every body decoder (a type added to the wire without a seed fails here).
    @Test func datagramSeedsCoverEveryType() throws {
        let types = Set(try FuzzTarget.datagram.seeds.map { try Message.decode($0).body.type })
        #expect(types == Set(MessageType.allCases), "no seed for \(Set(MessageType.allCases).subtracting(types))")
    }
}
