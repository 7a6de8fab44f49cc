// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ckptfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ckptfs", targets: ["ckptfs"]),
        .executable(name: "ckptfs-bench", targets: ["ckptfs-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
    ],
    targets: [
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CLinux"),
        .target(
            name: "ObjectStore",
            dependencies: [
                "CCurl", "CLinux", .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "BlockCache",
            dependencies: ["CLinux", "ObjectStore", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "Namespace",
            dependencies: ["ObjectStore", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "Overlay",
            dependencies: ["ObjectStore", "BlockCache", "Namespace", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "CkptFS",
            dependencies: [
                "CFuse", "ObjectStore", "BlockCache", "Namespace", "Overlay",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ckptfs",
            dependencies: [
                "CkptFS", "ObjectStore", "BlockCache", "Namespace", "Overlay",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ckptfs-bench",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "ObjectStoreTests", dependencies: ["ObjectStore", "TestSupport"]),
        .testTarget(name: "BlockCacheTests", dependencies: ["BlockCache", "ObjectStore", "TestSupport"]),
        .testTarget(name: "NamespaceTests", dependencies: ["Namespace", "ObjectStore", "TestSupport"]),
        .testTarget(name: "OverlayTests", dependencies: ["Overlay", "Namespace", "ObjectStore", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
