// The CLI's JSON array parsing/printing and array-argument loading.
#include "client/cli/cli_support.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "client/cli/json_array.h"
#include "models/io/npz.h"
#include "tests/client/test_util.h"

namespace dino::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ScopedTempDir;
using testing::WriteFile;

TEST(JsonArrayTest, ParsesVectorsMatricesAndScalars) {
  absl::StatusOr<NpyArray> v = ParseJsonArray("[0.1, 0.2, -3e2]");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->dtype, NpyDType::kFloat64);
  EXPECT_THAT(v->shape, ElementsAre(3));
  EXPECT_THAT(v->ToDoubles(), ElementsAre(0.1, 0.2, -300.0));

  absl::StatusOr<NpyArray> m = ParseJsonArray(" [[1, 2], [3, 4], [5, 6]] ");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_THAT(m->shape, ElementsAre(3, 2));
  EXPECT_THAT(m->ToDoubles(), ElementsAre(1, 2, 3, 4, 5, 6));

  absl::StatusOr<NpyArray> t = ParseJsonArray("[[[1], [2]], [[3], [4]]]");
  ASSERT_TRUE(t.ok());
  EXPECT_THAT(t->shape, ElementsAre(2, 2, 1));

  absl::StatusOr<NpyArray> s = ParseJsonArray("2.5");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->shape.empty());
  EXPECT_THAT(s->ToDoubles(), ElementsAre(2.5));

  EXPECT_THAT(ParseJsonArray("[]")->shape, ElementsAre(0));
  EXPECT_THAT(ParseJsonArray("[[], []]")->shape, ElementsAre(2, 0));
}

TEST(JsonArrayTest, RejectsMalformedInput) {
  auto message = [](const char* text) {
    absl::StatusOr<NpyArray> r = ParseJsonArray(text);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << text;
    return std::string(r.status().message());
  };
  EXPECT_THAT(message("[0.1, 0.2"), HasSubstr("invalid JSON array: parse error"));
  EXPECT_THAT(message("[1, \"a\"]"), HasSubstr("element [1] is a string, expected a number"));
  EXPECT_THAT(message("[[1, 2], [3]]"), HasSubstr("list [1] has 1 elements, expected 2"));
  EXPECT_THAT(message("[[1, 2], 3]"), HasSubstr("element [1] is a number, expected a list"));
  EXPECT_THAT(message("[[1], [[2]]]"), HasSubstr("element [1][0] is not a number"));
  EXPECT_THAT(message("[null]"), HasSubstr("element [0] is null"));
  EXPECT_THAT(message("{\"a\": 1}"), HasSubstr("is an object"));
  EXPECT_THAT(message("[1e400]"), HasSubstr("invalid JSON array"));
}

TEST(JsonArrayTest, FormatsShortestRoundTripText) {
  NpyArray f32 = *NpyArray::FromValues<float>({2, 2}, std::vector<float>{0.1f, -2, 1e-8f, 3.25f});
  EXPECT_EQ(FormatJsonArray(f32), "[[0.1,-2],[1e-08,3.25]]");
  NpyArray f64 = *NpyArray::FromValues<double>({3}, std::vector<double>{0.1, 1.0 / 3, 1e300});
  EXPECT_EQ(FormatJsonArray(f64), "[0.1,0.3333333333333333,1e+300]");
  NpyArray special = *NpyArray::FromValues<double>(
      {2}, std::vector<double>{std::nan(""), -std::numeric_limits<double>::infinity()});
  EXPECT_EQ(FormatJsonArray(special), "[null,null]");
  EXPECT_EQ(FormatJsonArray(*NpyArray::FromValues<int64_t>({}, std::vector<int64_t>{-7})), "-7");
  EXPECT_EQ(FormatJsonArray(*NpyArray::Zeros({2, 0}, NpyDType::kFloat64)), "[[],[]]");
  EXPECT_EQ(FormatJsonArray(*NpyArray::Zeros({0, 2}, NpyDType::kFloat64)), "[]");
  // Formatting then parsing gives the same values back.
  absl::StatusOr<NpyArray> back = ParseJsonArray(FormatJsonArray(f64));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, f64);
}

TEST(LoadArrayArgumentTest, InlineJson) {
  absl::StatusOr<NpyArray> v = LoadArrayArgument("[0.1,0.2]", "--m");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_THAT(v->shape, ElementsAre(2));
  absl::StatusOr<NpyArray> s = LoadArrayArgument("-1.5", "--m");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(s->shape, ElementsAre(1));  // A lone number is a one-element vector.
  absl::StatusOr<NpyArray> bad = LoadArrayArgument("[1, 2", "--v");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("--v: invalid JSON array"));
}

TEST(LoadArrayArgumentTest, Files) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  NpyArray f32 = *NpyArray::FromValues<float>({2}, std::vector<float>{1, 2});
  NpyArray i64 = *NpyArray::FromValues<int64_t>({3}, std::vector<int64_t>{1, 2, 3});
  ASSERT_TRUE(WriteNpy(dir + "/m.npy", f32).ok());
  ASSERT_TRUE(WriteNpy(dir + "/1.npy", i64).ok());
  ASSERT_TRUE(WriteNpz(dir + "/data.npz", {{"m_data", f32}, {"q_data", i64}}).ok());
  ASSERT_TRUE(WriteNpz(dir + "/one.npz", {{"only", f32}}).ok());
  WriteFile(dir + "/m.json", "[[1, 2], [3, 4]]\n");

  absl::StatusOr<NpyArray> npy = LoadArrayArgument(dir + "/m.npy", "--m");
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_EQ(*npy, f32);  // float32 stays float32.

  absl::StatusOr<NpyArray> ints = LoadArrayArgument(dir + "/1.npy", "--m");
  ASSERT_TRUE(ints.ok()) << ints.status();
  EXPECT_EQ(ints->dtype, NpyDType::kFloat64);  // Integers become float64.
  EXPECT_THAT(ints->ToDoubles(), ElementsAre(1, 2, 3));

  absl::StatusOr<NpyArray> member = LoadArrayArgument(dir + "/data.npz:m_data", "--m");
  ASSERT_TRUE(member.ok()) << member.status();
  EXPECT_EQ(*member, f32);
  absl::StatusOr<NpyArray> only = LoadArrayArgument(dir + "/one.npz", "--m");
  ASSERT_TRUE(only.ok()) << only.status();
  EXPECT_EQ(*only, f32);
  absl::StatusOr<NpyArray> ambiguous = LoadArrayArgument(dir + "/data.npz", "--m");
  EXPECT_THAT(ambiguous.status().message(),
              HasSubstr("holds 2 arrays (m_data, q_data); name one as"));
  EXPECT_EQ(LoadArrayArgument(dir + "/data.npz:nope", "--m").status().code(),
            absl::StatusCode::kNotFound);

  absl::StatusOr<NpyArray> json = LoadArrayArgument(dir + "/m.json", "--m");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(json->shape, ElementsAre(2, 2));

  absl::StatusOr<NpyArray> missing = LoadArrayArgument(dir + "/nope.npy", "--w");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("--w: cannot open " + dir + "/nope.npy"));
  absl::StatusOr<NpyArray> unknown = LoadArrayArgument("m.txt", "--m");
  EXPECT_THAT(unknown.status().message(),
              HasSubstr("--m: 'm.txt' is neither inline JSON (e.g. '[0.1, 0.2]') nor a .npy"));
}

TEST(ArrayJsonTest, PrintsDataOrSummary) {
  NpyArray a = *NpyArray::FromValues<double>({2, 2}, std::vector<double>{1, -2, 3, 4});
  EXPECT_EQ(ArrayJson(a, 1000, ""),
            R"({"shape": [2, 2], "dtype": "fp64", "data": [[1,-2],[3,4]]})");
  EXPECT_EQ(ArrayJson(a, 3, ""),
            R"({"shape": [2, 2], "dtype": "fp64", "summary": {"min": -2, "max": 4, "mean": 1.5, )"
            R"("l2_norm": 5.477225575051661, "non_finite": 0}})");
  EXPECT_EQ(ArrayJson(*a.AsType(NpyDType::kFloat32), 1000, "out \"x\".npy"),
            R"({"shape": [2, 2], "dtype": "fp32", "file": "out \"x\".npy", "summary": {"min": -2, )"
            R"("max": 4, "mean": 1.5, "l2_norm": 5.477225575051661, "non_finite": 0}})");
  ArraySummary s =
      Summarize(*NpyArray::FromValues<double>({3}, std::vector<double>{std::nan(""), 2, 4}));
  EXPECT_EQ(s.non_finite, 1);
  EXPECT_EQ(s.mean, 3);
}

TEST(SaveArraysTest, NpyKeepsPrimaryNpzKeepsAll) {
  const ScopedTempDir temp_dir;
  const std::string& dir = temp_dir.path();
  NpyArray a = *NpyArray::FromValues<double>({1}, std::vector<double>{1});
  NpyArray b = *NpyArray::FromValues<double>({2}, std::vector<double>{2, 3});
  ASSERT_TRUE(SaveArrays(dir + "/r.npy", {{"jvp", &a}, {"q", &b}}).ok());
  EXPECT_EQ(*ReadNpy(dir + "/r.npy"), a);
  ASSERT_TRUE(SaveArrays(dir + "/r.npz", {{"jvp", &a}, {"q", &b}}).ok());
  absl::StatusOr<std::map<std::string, NpyArray>> all = ReadNpz(dir + "/r.npz");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->at("q"), b);
  EXPECT_THAT(SaveArrays(dir + "/r.csv", {{"jvp", &a}}).message(),
              HasSubstr("must end in .npy (primary result) or .npz (all results)"));
}

TEST(StatusTextTest, NamesTheCode) {
  EXPECT_EQ(StatusText(absl::NotFoundError("unknown model 'x'")), "NOT_FOUND: unknown model 'x'");
}

}  // namespace
}  // namespace dino::cli
