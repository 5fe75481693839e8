import FuzzTargets

// libFuzzer's entry point (built with `swift build --sanitize=fuzzer --product discd-fuzz`, see
// scripts/fuzz.sh). DISCD_FUZZ names the target (FuzzTarget). A plain build is a program that does
// nothing: no top-level code here, so that libFuzzer's main can take over.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    FuzzTarget.fromEnvironment.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// Before fuzzing starts: writes the target's built-in seeds into $DISCD_FUZZ_SEED_DIR (the corpus
/// directory scripts/fuzz runs on), so that every run starts from valid inputs.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    FuzzTarget.fromEnvironment.writeSeedsFromEnvironment()
    return 0
}
