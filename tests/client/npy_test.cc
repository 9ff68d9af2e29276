// .npy reading and writing, checked against NumPy itself.
#include "models/io/npy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/client/test_util.h"

namespace dino {
namespace {

using ::testing::HasSubstr;
using testing::Ramp;
using testing::ReadFile;
using testing::RunPython;
using testing::ScopedTempDir;
using testing::WriteFile;

TEST(NpyDTypeTest, DescrRoundTrip) {
  for (NpyDType d : {NpyDType::kFloat32, NpyDType::kFloat64, NpyDType::kInt32, NpyDType::kInt64}) {
    bool big = true;
    absl::StatusOr<NpyDType> parsed = NpyDTypeFromDescr(NpyDTypeDescr(d), &big);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, d);
    EXPECT_FALSE(big);
  }
  bool big = false;
  EXPECT_EQ(*NpyDTypeFromDescr(">f8", &big), NpyDType::kFloat64);
  EXPECT_TRUE(big);
  absl::StatusOr<NpyDType> bad = NpyDTypeFromDescr("<c16");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("'<c16'"));
}

TEST(NpyArrayTest, FactoriesAndConversions) {
  std::vector<double> values = {1.5, -2, 3};
  absl::StatusOr<NpyArray> a = NpyArray::FromValues<double>({3}, values);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->bytes.size(), 24u);
  EXPECT_EQ(a->ToDoubles(), values);
  EXPECT_EQ(a->ToFloats(), (std::vector<float>{1.5f, -2.f, 3.f}));
  EXPECT_TRUE(a->Validate().ok());

  absl::StatusOr<NpyArray> wrong = NpyArray::FromValues<double>({2, 2}, values);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong.status().message(), HasSubstr("holds 4 elements but 3 values"));

  EXPECT_FALSE(NpyArray::Zeros({2, -1}, NpyDType::kFloat32).ok());
  EXPECT_FALSE(NpyArray::Zeros({int64_t{1} << 62, 8}, NpyDType::kFloat64).ok());
  absl::StatusOr<NpyArray> scalar = NpyArray::Zeros({}, NpyDType::kInt64);
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ(scalar->num_elements(), 1);
  EXPECT_EQ(scalar->bytes.size(), 8u);

  NpyArray f32 = *a->AsType(NpyDType::kFloat32);
  EXPECT_EQ(f32.dtype, NpyDType::kFloat32);
  EXPECT_EQ(f32.View<float>()[1], -2.f);
  EXPECT_EQ(a->AsType(NpyDType::kInt64).status().code(), absl::StatusCode::kInvalidArgument);
  NpyArray ints = *NpyArray::FromValues<int64_t>({2}, std::vector<int64_t>{7, int64_t{1} << 40});
  EXPECT_EQ(ints.AsType(NpyDType::kFloat64)->ToDoubles()[1], std::ldexp(1.0, 40));
  EXPECT_EQ(ints.AsType(NpyDType::kInt32).status().code(), absl::StatusCode::kInvalidArgument);

  NpyArray broken = *a;
  broken.bytes.pop_back();
  EXPECT_THAT(broken.Validate().message(), HasSubstr("needs 24 bytes but holds 23"));
}

TEST(NpyArrayDeathTest, ViewWithWrongTypeAborts) {
  NpyArray a = *NpyArray::Zeros({2}, NpyDType::kFloat32);
  EXPECT_DEATH(a.View<double>(), "array holds float32, not float64");
}

TEST(NpyTest, RoundTripsEveryDtypeAndShape) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {5}, {2, 3}, {2, 0, 3}, {2, 3, 4}};
  for (NpyDType dtype :
       {NpyDType::kFloat32, NpyDType::kFloat64, NpyDType::kInt32, NpyDType::kInt64}) {
    for (const auto& shape : shapes) {
      const NpyArray array = Ramp(shape, dtype);
      const std::string path = dir + "/a.npy";
      ASSERT_TRUE(WriteNpy(path, array).ok());
      absl::StatusOr<NpyArray> back = ReadNpy(path);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(*back, array) << NpyDTypeName(dtype) << " " << ShapeToString(shape);
      // In memory too.
      absl::StatusOr<NpyArray> decoded = DecodeNpy(EncodeNpy(array), "mem");
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      EXPECT_EQ(*decoded, array);
      // The data starts at a multiple of 64 bytes, as numpy aligns it.
      EXPECT_EQ(EncodeNpyHeader(array).size() % 64, 0u);
    }
  }
}

TEST(NpyTest, OutputIsByteIdenticalToNumpySave) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  ASSERT_TRUE(WriteNpy(dir + "/ours_f8.npy", Ramp({2, 3}, NpyDType::kFloat64)).ok());
  ASSERT_TRUE(WriteNpy(dir + "/ours_f4.npy", Ramp({7}, NpyDType::kFloat32)).ok());
  ASSERT_TRUE(WriteNpy(dir + "/ours_i8.npy", Ramp({}, NpyDType::kInt64)).ok());
  ASSERT_TRUE(RunPython(dir, R"(
np.save('np_f8.npy', (0.5 * np.arange(6) - 1).reshape(2, 3))
np.save('np_f4.npy', (0.5 * np.arange(7) - 1).astype('<f4'))
np.save('np_i8.npy', np.array(0, dtype='<i8'))
)"));
  EXPECT_EQ(ReadFile(dir + "/ours_f8.npy"), ReadFile(dir + "/np_f8.npy"));
  EXPECT_EQ(ReadFile(dir + "/ours_f4.npy"), ReadFile(dir + "/np_f4.npy"));
  EXPECT_EQ(ReadFile(dir + "/ours_i8.npy"), ReadFile(dir + "/np_i8.npy"));
}

TEST(NpyTest, ReadsWhatNumpyWrites) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  ASSERT_TRUE(RunPython(dir, R"(
from numpy.lib import format as fmt
r = lambda n, dt: (0.5 * np.arange(n) - 1).astype(dt)
np.save('c_f4.npy', r(12, '<f4').reshape(3, 4))
np.save('c_f8.npy', r(24, '<f8').reshape(2, 3, 4))
np.save('i4.npy', np.arange(5, dtype='<i4'))
np.save('i8.npy', np.arange(6, dtype='<i8').reshape(2, 3))
np.save('f_2d.npy', np.asfortranarray(r(12, '<f8').reshape(3, 4)))
np.save('f_3d.npy', np.asfortranarray(r(24, '<f4').reshape(2, 3, 4)))
np.save('f_4d.npy', np.asfortranarray(r(120, '<f8').reshape(2, 3, 4, 5)))
np.save('big_f8.npy', r(6, '>f8').reshape(2, 3))
np.save('big_i4.npy', np.arange(5, dtype='>i4'))
np.save('big_fortran.npy', np.asfortranarray(r(12, '>f4').reshape(3, 4)))
np.save('scalar.npy', np.float64(-1.0))
np.save('empty.npy', np.zeros((0, 3)))
with open('v2.npy', 'wb') as f: fmt.write_array(f, r(12, '<f8').reshape(3, 4), version=(2, 0))
with open('v3.npy', 'wb') as f: fmt.write_array(f, r(12, '<f4').reshape(3, 4), version=(3, 0))
)"));
  struct Case {
    std::string file;
    std::vector<int64_t> shape;
    NpyDType dtype;
  };
  const std::vector<Case> cases = {
      {"c_f4.npy", {3, 4}, NpyDType::kFloat32},
      {"c_f8.npy", {2, 3, 4}, NpyDType::kFloat64},
      {"i4.npy", {5}, NpyDType::kInt32},
      {"i8.npy", {2, 3}, NpyDType::kInt64},
      {"f_2d.npy", {3, 4}, NpyDType::kFloat64},
      {"f_3d.npy", {2, 3, 4}, NpyDType::kFloat32},
      {"f_4d.npy", {2, 3, 4, 5}, NpyDType::kFloat64},
      {"big_f8.npy", {2, 3}, NpyDType::kFloat64},
      {"big_i4.npy", {5}, NpyDType::kInt32},
      {"big_fortran.npy", {3, 4}, NpyDType::kFloat32},
      {"scalar.npy", {}, NpyDType::kFloat64},
      {"empty.npy", {0, 3}, NpyDType::kFloat64},
      {"v2.npy", {3, 4}, NpyDType::kFloat64},
      {"v3.npy", {3, 4}, NpyDType::kFloat32},
  };
  for (const Case& c : cases) {
    absl::StatusOr<NpyArray> array = ReadNpy(dir + "/" + c.file);
    ASSERT_TRUE(array.ok()) << c.file << ": " << array.status();
    EXPECT_EQ(*array, Ramp(c.shape, c.dtype)) << c.file;
  }
}

TEST(NpyTest, NumpyReadsWhatWeWrite) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  ASSERT_TRUE(WriteNpy(dir + "/f4.npy", Ramp({3, 4}, NpyDType::kFloat32)).ok());
  ASSERT_TRUE(WriteNpy(dir + "/f8.npy", Ramp({2, 3, 4}, NpyDType::kFloat64)).ok());
  ASSERT_TRUE(WriteNpy(dir + "/i4.npy", Ramp({5}, NpyDType::kInt32)).ok());
  ASSERT_TRUE(WriteNpy(dir + "/i8.npy", Ramp({}, NpyDType::kInt64)).ok());
  ASSERT_TRUE(WriteNpy(dir + "/empty.npy", Ramp({0, 2}, NpyDType::kFloat64)).ok());
  ASSERT_TRUE(RunPython(dir, R"(
r = lambda n, dt: (0.5 * np.arange(n) - 1).astype(dt)
def check(name, expected):
    a = np.load(name)
    assert a.dtype == expected.dtype, (name, a.dtype)
    assert a.shape == expected.shape, (name, a.shape)
    assert a.flags['C_CONTIGUOUS']
    assert np.array_equal(a, expected), name
check('f4.npy', r(12, '<f4').reshape(3, 4))
check('f8.npy', r(24, '<f8').reshape(2, 3, 4))
check('i4.npy', np.arange(5, dtype='<i4'))
check('i8.npy', np.array(0, dtype='<i8'))
check('empty.npy', np.zeros((0, 2)))
)"));
}

TEST(NpyTest, LongHeaderUsesVersion2) {
  // A shape tuple too long for version 1.0's 16-bit header length.
  std::vector<int64_t> shape(30000, 1);
  const NpyArray array = Ramp(shape, NpyDType::kFloat32);
  const std::string encoded = EncodeNpy(array);
  EXPECT_EQ(encoded[6], 2);
  absl::StatusOr<NpyArray> back = DecodeNpy(encoded, "mem");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, array);
}

TEST(NpyTest, PreciseErrors) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  absl::StatusOr<NpyArray> missing = ReadNpy(dir + "/nope.npy");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir + "/nope.npy"));

  WriteFile(dir + "/text.npy", "hello world, not numpy");
  absl::StatusOr<NpyArray> text = ReadNpy(dir + "/text.npy");
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("text.npy: not a .npy file"));

  const std::string good = EncodeNpy(Ramp({4}, NpyDType::kFloat64));
  WriteFile(dir + "/short.npy", good.substr(0, good.size() - 3));
  EXPECT_THAT(ReadNpy(dir + "/short.npy").status().message(),
              HasSubstr("truncated: the header declares shape [4] of float64 (32 bytes) but "
                        "only 29 data bytes follow"));
  WriteFile(dir + "/long.npy", good + "xx");
  EXPECT_THAT(ReadNpy(dir + "/long.npy").status().message(),
              HasSubstr("2 unexpected trailing bytes"));

  std::string v9 = good;
  v9[6] = 9;
  EXPECT_THAT(DecodeNpy(v9, "v9").status().message(),
              HasSubstr("unsupported .npy format version 9.0"));

  ASSERT_TRUE(RunPython(dir, R"(
np.save('complex.npy', np.zeros(3, dtype=np.complex128))
np.save('record.npy', np.zeros(3, dtype=[('a', '<f8'), ('b', '<i4')]))
np.save('object.npy', np.array([{}, 1], dtype=object), allow_pickle=True)
np.save('f2.npy', np.zeros(3, dtype=np.float16))
)"));
  EXPECT_THAT(ReadNpy(dir + "/complex.npy").status().message(), HasSubstr("'<c16'"));
  EXPECT_THAT(ReadNpy(dir + "/record.npy").status().message(), HasSubstr("structured"));
  EXPECT_THAT(ReadNpy(dir + "/object.npy").status().message(), HasSubstr("'|O'"));
  EXPECT_THAT(ReadNpy(dir + "/f2.npy").status().message(), HasSubstr("'<f2'"));

  NpyHeader header;
  EXPECT_THAT(
      ParseNpyHeaderDict("{'descr': '<f8', 'fortran_order': False}", "x", &header).message(),
      HasSubstr("lacks key(s) shape"));
  EXPECT_THAT(ParseNpyHeaderDict("{'descr': '<f8', 'fortran_order': False, 'shape': (3, -1), }",
                                 "x", &header)
                  .message(),
              HasSubstr("non-negative integer"));
  EXPECT_TRUE(ParseNpyHeaderDict("{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 4L)}", "x",
                                 &header)
                  .ok());
  EXPECT_EQ(header.shape, (std::vector<int64_t>{3, 4}));
  EXPECT_THAT(ParseNpyHeaderDict(
                  "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999, 99999999999)}",
                  "x", &header)
                  .message(),
              HasSubstr("too many elements"));

  NpyArray broken = Ramp({3}, NpyDType::kFloat64);
  broken.bytes.resize(5);
  EXPECT_EQ(WriteNpy(dir + "/broken.npy", broken).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteNpy(dir + "/no/such/dir/a.npy", Ramp({3}, NpyDType::kFloat64)).code(),
            absl::StatusCode::kNotFound);
}

// Found by fuzz/npy_fuzzer (its corpus keeps the input): an empty Fortran-order array with a
// huge extent, e.g. shape (10^18, 0), was "transposed" by walking 10^18 / 64 blocks, so a
// 100-byte file hung its reader.
TEST(NpyTest, EmptyFortranArrayWithAHugeExtentDecodesAtOnce) {
  const std::string dict =
      "{'descr': '<f8', 'fortran_order': True, 'shape': (861293337707602843, 0), }";
  std::string header = std::string("\x93NUMPY\x01\x00", 8);
  const std::string padded = dict + std::string(63 - (10 + dict.size()) % 64, ' ') + "\n";
  header += static_cast<char>(padded.size() & 0xff);
  header += static_cast<char>(padded.size() >> 8);
  absl::StatusOr<NpyArray> empty = DecodeNpy(header + padded, "empty");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{861293337707602843, 0}));
  EXPECT_TRUE(empty->bytes.empty());
}

TEST(NpyTest, LargeArrayRoundTrip) {
  // ~100 MB, the size of a real training set: checks the bulk path has no per-element cost.
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  NpyArray big = *NpyArray::Zeros({12'500'000}, NpyDType::kFloat64);
  absl::Span<double> values = big.MutableView<double>();
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i % 1000) * 0.25;
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(WriteNpy(dir + "/big.npy", big).ok());
  absl::StatusOr<NpyArray> back = ReadNpy(dir + "/big.npy");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == big);
  RecordProperty("write_read_seconds", std::to_string(seconds));
  EXPECT_LT(seconds, 20.0);
}

}  // namespace
}  // namespace dino
