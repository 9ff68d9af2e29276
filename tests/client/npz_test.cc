// .npz reading and writing, checked against numpy.savez / savez_compressed / load and
// Python's zipfile (for zip64 end records and archive comments).
#include "models/io/npz.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tests/client/test_util.h"

namespace dino {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::Ramp;
using testing::ReadFile;
using testing::RunPython;
using testing::ScopedTempDir;
using testing::WriteFile;

// What the data pipeline stores: mq_data.npz-like content plus edge cases.
std::map<std::string, NpyArray> SampleArrays() {
  return {
      {"m_data", Ramp({5, 3}, NpyDType::kFloat64)}, {"q_data", Ramp({5, 2}, NpyDType::kFloat32)},
      {"ids", Ramp({4}, NpyDType::kInt64)},         {"count", Ramp({}, NpyDType::kInt32)},
      {"empty", Ramp({0, 3}, NpyDType::kFloat64)},
  };
}

// Python that checks np.load(<file>) against SampleArrays().
constexpr char kCheckSample[] = R"(
r = lambda n, dt: (0.5 * np.arange(n) - 1).astype(dt)
expected = {'m_data': r(15, '<f8').reshape(5, 3), 'q_data': r(10, '<f4').reshape(5, 2),
            'ids': np.arange(4, dtype='<i8'), 'count': np.array(0, dtype='<i4'),
            'empty': np.zeros((0, 3))}
def check(path):
    import zipfile
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None, 'CRC error in ' + path
    with np.load(path) as f:
        assert sorted(f.files) == sorted(expected), f.files
        for k, v in expected.items():
            assert f[k].dtype == v.dtype and f[k].shape == v.shape, (path, k)
            assert np.array_equal(f[k], v), (path, k)
)";

TEST(NpzTest, RoundTripsWithEveryWriterOption) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  const std::map<std::string, NpyArray> arrays = SampleArrays();
  struct Variant {
    std::string file;
    NpzWriteOptions options;
  };
  std::vector<Variant> variants(4);
  variants[0].file = "stored.npz";
  variants[1].file = "deflate.npz";
  variants[1].options.compress = true;
  variants[2].file = "stored64.npz";
  variants[2].options.force_zip64 = true;
  variants[3].file = "deflate64.npz";
  variants[3].options.compress = true;
  variants[3].options.force_zip64 = true;
  variants[3].options.compression_level = 9;
  std::string checks;
  for (const Variant& v : variants) {
    ASSERT_TRUE(WriteNpz(dir + "/" + v.file, arrays, v.options).ok()) << v.file;
    absl::StatusOr<std::map<std::string, NpyArray>> back = ReadNpz(dir + "/" + v.file);
    ASSERT_TRUE(back.ok()) << v.file << ": " << back.status();
    EXPECT_TRUE(*back == arrays) << v.file;
    checks += "check('" + v.file + "')\n";
  }
  // NumPy and zipfile (CRCs, zip64 fields) accept every variant.
  ASSERT_TRUE(RunPython(dir, std::string(kCheckSample) + checks));
}

TEST(NpzTest, ReadsNumpySavezAndSavezCompressed) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  ASSERT_TRUE(RunPython(dir, R"(
r = lambda n, dt: (0.5 * np.arange(n) - 1).astype(dt)
arrays = dict(m_data=r(15, '<f8').reshape(5, 3), q_data=r(10, '<f4').reshape(5, 2),
              ids=np.arange(4, dtype='<i8'), count=np.array(0, dtype='<i4'),
              empty=np.zeros((0, 3)))
np.savez('plain.npz', **arrays)
np.savez_compressed('compressed.npz', **arrays)
# Large enough that deflate output spans several 1 MiB input chunks of the reader.
big = np.sin(np.arange(600000, dtype='<f8'))
np.savez_compressed('big.npz', big=big, fortran=np.asfortranarray(big[:1200].reshape(30, 40)))
np.savez('positional.npz', r(3, '<f8'), r(2, '<f4'))
)"));
  const std::map<std::string, NpyArray> expected = SampleArrays();
  for (const char* file : {"plain.npz", "compressed.npz"}) {
    absl::StatusOr<NpzReader> reader = NpzReader::Open(dir + "/" + file);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_THAT(reader->names(), ElementsAre("m_data", "q_data", "ids", "count", "empty"));
    EXPECT_TRUE(reader->contains("q_data"));
    EXPECT_FALSE(reader->contains("q_data.npy"));
    for (const auto& [name, array] : expected) {
      absl::StatusOr<NpyArray> got = reader->Read(name);
      ASSERT_TRUE(got.ok()) << file << " " << name << ": " << got.status();
      EXPECT_EQ(*got, array) << file << " " << name;
    }
  }
  absl::StatusOr<NpyArray> big = ReadNpzArray(dir + "/big.npz", "big");
  ASSERT_TRUE(big.ok()) << big.status();
  ASSERT_EQ(big->shape, (std::vector<int64_t>{600000}));
  absl::Span<const double> values = big->View<double>();
  // NumPy's sin may differ from libm's in the last bit.
  for (size_t i = 0; i < values.size(); i += 9973)
    EXPECT_NEAR(values[i], std::sin(double(i)), 1e-15);
  absl::StatusOr<NpyArray> fortran = ReadNpzArray(dir + "/big.npz", "fortran");
  ASSERT_TRUE(fortran.ok()) << fortran.status();
  EXPECT_EQ(fortran->View<double>()[41], values[41]);  // Row 1, column 1 in C order.

  absl::StatusOr<std::map<std::string, NpyArray>> positional = ReadNpz(dir + "/positional.npz");
  ASSERT_TRUE(positional.ok());
  EXPECT_EQ(positional->size(), 2u);
  EXPECT_EQ(positional->at("arr_1").dtype, NpyDType::kFloat32);
}

TEST(NpzTest, ReadsZip64EndRecordsAndComments) {
  // 70000 members force Python's zipfile to write zip64 end-of-central-directory records
  // (the 16-bit entry count overflows); a trailing comment moves the end record.
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  ASSERT_TRUE(RunPython(dir, R"(
import io, zipfile
def npy(a):
    b = io.BytesIO(); np.save(b, a); return b.getvalue()
with zipfile.ZipFile('many.npz', 'w', zipfile.ZIP_STORED) as z:
    for i in range(70000):
        z.writestr('a%d.npy' % i, npy(np.array([i, -i], dtype='<i8')))
with zipfile.ZipFile('comment.npz', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('x.npy', npy(np.arange(3.0)))
    z.comment = b'made by a test' * 100
)"));
  absl::StatusOr<NpzReader> many = NpzReader::Open(dir + "/many.npz");
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_EQ(many->names().size(), 70000u);
  absl::StatusOr<NpyArray> last = many->Read("a69999");
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_THAT(last->View<int64_t>(), ElementsAre(69999, -69999));

  absl::StatusOr<NpyArray> x = ReadNpzArray(dir + "/comment.npz", "x");
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_THAT(x->View<double>(), ElementsAre(0.0, 1.0, 2.0));
}

TEST(NpzTest, WritesZip64EndRecordsForManyMembers) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  absl::StatusOr<NpzWriter> writer = NpzWriter::Create(dir + "/many.npz");
  ASSERT_TRUE(writer.ok());
  const NpyArray small = Ramp({2}, NpyDType::kInt64);
  for (int i = 0; i < 66000; ++i) ASSERT_TRUE(writer->Add("a" + std::to_string(i), small).ok());
  ASSERT_TRUE(writer->Close().ok());
  absl::StatusOr<NpzReader> reader = NpzReader::Open(dir + "/many.npz");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->names().size(), 66000u);
  ASSERT_TRUE(RunPython(dir, R"(
with np.load('many.npz') as f:
    assert len(f.files) == 66000
    assert list(f['a65999']) == [0, 1]
)"));
}

TEST(NpzTest, PreciseErrors) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  const std::string path = dir + "/a.npz";
  ASSERT_TRUE(WriteNpz(path, SampleArrays()).ok());

  absl::StatusOr<NpyArray> missing = ReadNpzArray(path, "U_data");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("has no array 'U_data' (it holds: count, empty, ids, m_data, q_data)"));

  EXPECT_EQ(NpzReader::Open(dir + "/none.npz").status().code(), absl::StatusCode::kNotFound);
  WriteFile(dir + "/text.npz", std::string(100, 'x'));
  absl::StatusOr<NpzReader> text = NpzReader::Open(dir + "/text.npz");
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("not a zip/.npz archive"));

  // Flip one data byte of the stored member "ids": its CRC no longer matches.
  std::string bytes = ReadFile(path);
  const NpyArray ids = Ramp({4}, NpyDType::kInt64);
  const std::string ids_data(ids.bytes.begin(), ids.bytes.end());
  const size_t at = bytes.find(ids_data);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 9] ^= 0x40;
  WriteFile(dir + "/corrupt.npz", bytes);
  absl::StatusOr<NpyArray> corrupt = ReadNpzArray(dir + "/corrupt.npz", "ids");
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(corrupt.status().message(), HasSubstr("corrupt.npz[ids.npy]: CRC-32 mismatch"));
  EXPECT_TRUE(ReadNpzArray(dir + "/corrupt.npz", "m_data").ok());

  // A truncated deflate archive: cut in the middle of the data keeps no end record.
  NpzWriteOptions compress;
  compress.compress = true;
  ASSERT_TRUE(WriteNpz(dir + "/c.npz", SampleArrays(), compress).ok());
  std::string c = ReadFile(dir + "/c.npz");
  WriteFile(dir + "/cut.npz", c.substr(0, c.size() / 2));
  EXPECT_FALSE(NpzReader::Open(dir + "/cut.npz").ok());

  // All-zero data compresses close to deflate's maximum ratio and must still be accepted;
  // a directory entry claiming more than deflate can produce is refused before allocating.
  ASSERT_TRUE(RunPython(dir, "np.savez_compressed('zeros.npz', z=np.zeros(4 << 20))"));
  absl::StatusOr<NpyArray> zeros = ReadNpzArray(dir + "/zeros.npz", "z");
  ASSERT_TRUE(zeros.ok()) << zeros.status();
  EXPECT_EQ(zeros->num_elements(), 4 << 20);
  std::string forged = ReadFile(dir + "/zeros.npz");
  const size_t central = forged.find("PK\x01\x02");
  ASSERT_NE(central, std::string::npos);
  forged.replace(central + 24, 4, "\xf0\xff\xff\x7f");  // Uncompressed size ~2 GiB.
  WriteFile(dir + "/forged.npz", forged);
  absl::StatusOr<NpyArray> bomb = ReadNpzArray(dir + "/forged.npz", "z");
  EXPECT_EQ(bomb.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bomb.status().message(), HasSubstr("impossible for deflate"));

  absl::StatusOr<NpzWriter> writer = NpzWriter::Create(dir + "/dup.npz");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Add("x", ids).ok());
  absl::Status dup = writer->Add("x", ids);
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dup.message(), HasSubstr("'x' was already added"));
  EXPECT_EQ(writer->Add("", ids).code(), absl::StatusCode::kInvalidArgument);
  NpyArray broken = ids;
  broken.bytes.pop_back();
  EXPECT_EQ(writer->Add("y", broken).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(writer->Close().ok());
  EXPECT_EQ(writer->Add("z", ids).code(), absl::StatusCode::kFailedPrecondition);
  // The failed Adds left the archive intact.
  absl::StatusOr<std::map<std::string, NpyArray>> dup_back = ReadNpz(dir + "/dup.npz");
  ASSERT_TRUE(dup_back.ok()) << dup_back.status();
  EXPECT_EQ(dup_back->size(), 1u);

  ASSERT_TRUE(RunPython(dir, R"(
import zipfile
with zipfile.ZipFile('other.npz', 'w') as z:
    z.writestr('readme.txt', 'not an array')
    z.writestr('x.npy', b'garbage')
)"));
  absl::StatusOr<NpzReader> other = NpzReader::Open(dir + "/other.npz");
  ASSERT_TRUE(other.ok());
  EXPECT_THAT(other->Read("readme.txt").status().message(), HasSubstr("not a .npy file"));
  EXPECT_THAT(other->Read("x").status().message(), HasSubstr("other.npz[x.npy]: not a .npy"));
}

}  // namespace
}  // namespace dino
