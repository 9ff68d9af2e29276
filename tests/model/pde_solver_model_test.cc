// The exact PDE models as servables (server/core/pde_solver_model.h): agreement with
// `dino-train generate`, the adjoint identity, finite differences, client-basis reduced
// Jacobians, batching, pde.json errors, the repository and the prior a DINO's metadata names.
// Small meshes (4 × 4: d_M = 25 < d_Q = 50; 8 × 8: d_M = 81 > d_Q), so both ways of computing
// a full Jacobian (sensitivity columns, adjoint rows) are exercised.
#include "server/core/pde_solver_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "models/io/npz.h"
#include "models/pipeline/files.h"
#include "models/pipeline/generate.h"
#include "server/core/model_manager.h"
#include "server/core/model_repository.h"
#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const SurrogateModel> Pde(pipeline::Problem problem, int mesh_cells) {
  PdeServableConfig config;
  config.problem = problem;
  config.mesh_cells = mesh_cells;
  auto model = PdeSolverModel::FromConfig(config, "test", ComputeLimits{});
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// Prior samples: parameters of the size the map is meant for.
torch::Tensor PriorSamples(const SurrogateModel& model, int64_t count, uint64_t seed) {
  auto prior = model.prior();
  EXPECT_TRUE(prior.ok()) << prior.status();
  return *(*prior)->Sample(count, seed, 0, 1024);
}

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  return ((actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).norm() /
          expected.to(torch::kFloat64).norm())
      .item<double>();
}

torch::Tensor Orthonormal(int64_t rows, int64_t cols, uint64_t seed) {
  torch::manual_seed(seed);
  return std::get<0>(torch::linalg_qr(torch::randn({rows, cols}, torch::kFloat64)));
}

torch::Tensor FromNpy(const NpyArray& array) {
  return torch::from_blob(const_cast<char*>(array.bytes.data()), array.shape, torch::kFloat64)
      .clone();
}

const pipeline::Problem kProblems[] = {pipeline::Problem::kPoisson,
                                       pipeline::Problem::kReactionDiffusion};

// The served map is the generator's: the same m (the served prior's samples are the
// generator's), q and full Jacobians to 1e-12.
TEST(PdeSolverModel, AgreesWithDinoTrainGenerate) {
  for (pipeline::Problem problem : kProblems) {
    SCOPED_TRACE(pipeline::ProblemName(problem));
    const std::string dir = testing::MakeTempDir("dino-pde-generate-");
    pipeline::GenerateOptions options;
    options.problem = problem;
    options.samples = 3;
    options.seed = 7;
    options.mesh = 8;
    options.jacobian = pipeline::JacobianOutput::kFull;
    options.threads = 1;
    options.out_dir = dir;
    options.progress = pipeline::ProgressStyle::kNone;
    ASSERT_TRUE(pipeline::Generate(options).ok());
    auto mq = ReadNpz(dir + "/" + pipeline::kMqFile);
    auto jacobians = ReadNpzArray(dir + "/" + pipeline::kJacobianFile, pipeline::kJData);
    ASSERT_TRUE(mq.ok() && jacobians.ok());
    const torch::Tensor m = FromNpy(mq->at(pipeline::kMData));
    const torch::Tensor q = FromNpy(mq->at(pipeline::kQData));
    const torch::Tensor j = FromNpy(*jacobians);

    auto model = Pde(problem, 8);
    EXPECT_EQ((PriorSamples(*model, 3, 7) - m).abs().max().item<double>(), 0.0);
    auto served_q = model->Evaluate(m);
    ASSERT_TRUE(served_q.ok()) << served_q.status();
    EXPECT_LT(RelativeError(*served_q, q), 1e-12);
    for (int64_t i = 0; i < 3; ++i) {
      auto served_j = model->Jacobian(m[i], /*want_q=*/true);
      ASSERT_TRUE(served_j.ok()) << served_j.status();
      EXPECT_LT(RelativeError(served_j->values, j[i]), 1e-12);
      EXPECT_LT(RelativeError(served_j->q, q[i]), 1e-12);
    }
    std::filesystem::remove_all(dir);
  }
}

TEST(PdeSolverModel, DescribesItselfAsExact) {
  auto model = Pde(pipeline::Problem::kReactionDiffusion, 8);
  const ModelInfo& info = model->info();
  EXPECT_EQ(info.architecture, "pde");
  EXPECT_EQ(info.input_dim, 81);
  EXPECT_EQ(info.output_dim, 50);
  EXPECT_EQ(info.dtype, torch::kFloat64);
  EXPECT_FALSE(info.has_reduced_bases);
  EXPECT_TRUE(info.has_prior);
  EXPECT_EQ(info.metadata["exact"], true);
  EXPECT_EQ(info.metadata["problem"]["name"], "reaction_diffusion");
  EXPECT_EQ(info.metadata["problem"]["mesh_cells"], 8);
  EXPECT_EQ(info.metadata["same_map_as"],
            "dino-train generate --problem reaction_diffusion --mesh 8");
  EXPECT_EQ(info.metadata["observation_coordinates"].size(), 50u);
  EXPECT_EQ(model->GetBases().status().code(), absl::StatusCode::kFailedPrecondition);
  auto reduced = model->ReducedJacobian(PriorSamples(*model, 1, 1), {}, {});
  EXPECT_EQ(reduced.status().code(), absl::StatusCode::kFailedPrecondition);
}

// ⟨Jv, w⟩ = ⟨v, Jᵀw⟩ and Jv, Jᵀw equal the full Jacobian's products, on both meshes, with few
// directions (sensitivity / adjoint solves) and with more than min(d_Q, d_M) (through the
// full Jacobian).
TEST(PdeSolverModel, JvpAndVjpPassTheAdjointIdentity) {
  for (pipeline::Problem problem : kProblems) {
    for (int mesh : {4, 8}) {
      SCOPED_TRACE(::testing::Message() << pipeline::ProblemName(problem) << " mesh " << mesh);
      auto model = Pde(problem, mesh);
      const int64_t d_m = model->info().input_dim, d_q = model->info().output_dim;
      const torch::Tensor m = PriorSamples(*model, 1, 3)[0];
      const torch::Tensor jacobian = model->Jacobian(m, false)->values;
      for (int64_t k : {int64_t{3}, std::min(d_m, d_q) + 5}) {
        torch::manual_seed(k);
        const torch::Tensor v = torch::randn({k, d_m}, torch::kFloat64);
        const torch::Tensor w = torch::randn({k, d_q}, torch::kFloat64);
        auto jv = model->Jvp(m, v, /*want_q=*/true);
        auto jtw = model->Vjp(m, w, /*want_q=*/false);
        ASSERT_TRUE(jv.ok() && jtw.ok());
        ASSERT_EQ(jv->values.sizes(), (std::vector<int64_t>{k, d_q}));
        ASSERT_EQ(jtw->values.sizes(), (std::vector<int64_t>{k, d_m}));
        const torch::Tensor left = (jv->values * w).sum(1), right = (v * jtw->values).sum(1);
        EXPECT_LT(RelativeError(left, right), 1e-12);
        EXPECT_LT(RelativeError(jv->values, torch::mm(v, jacobian.t())), 1e-12);
        EXPECT_LT(RelativeError(jtw->values, torch::mm(w, jacobian)), 1e-12);
        EXPECT_LT(RelativeError(jv->q, *model->Evaluate(m)), 1e-15);
      }
    }
  }
}

TEST(PdeSolverModel, JvpMatchesCentralFiniteDifferences) {
  for (pipeline::Problem problem : kProblems) {
    SCOPED_TRACE(pipeline::ProblemName(problem));
    auto model = Pde(problem, 8);
    const torch::Tensor m = PriorSamples(*model, 1, 5)[0];
    torch::manual_seed(11);
    const torch::Tensor v = torch::randn({model->info().input_dim}, torch::kFloat64);
    const double h = 1e-5;
    const torch::Tensor difference =
        (*model->Evaluate(m + h * v) - *model->Evaluate(m - h * v)) / (2 * h);
    auto jv = model->Jvp(m, v, false);
    ASSERT_TRUE(jv.ok());
    // Central differences: O(h²) truncation, O(ε/h) rounding, both far below 1e-7 here.
    EXPECT_LT(RelativeError(jv->values[0], difference[0]), 1e-7);
  }
}

TEST(PdeSolverModel, ReducedJacobianInClientBasesIsUTransposeJV) {
  for (pipeline::Problem problem : kProblems) {
    SCOPED_TRACE(pipeline::ProblemName(problem));
    auto model = Pde(problem, 8);
    const torch::Tensor m = PriorSamples(*model, 2, 9);
    // k_Q < k_M (adjoint solves) and k_Q > k_M (sensitivity solves).
    for (auto [k_q, k_m] : {std::pair<int64_t, int64_t>{4, 10}, {12, 5}}) {
      const torch::Tensor u = Orthonormal(50, k_q, 1), v = Orthonormal(81, k_m, 2);
      auto reduced = model->ReducedJacobian(m, u, v);
      ASSERT_TRUE(reduced.ok()) << reduced.status();
      ASSERT_EQ(reduced->reduced_jacobian.sizes(), (std::vector<int64_t>{2, k_q, k_m}));
      for (int64_t b = 0; b < 2; ++b) {
        const torch::Tensor full = model->Jacobian(m[b], false)->values;
        EXPECT_LT(RelativeError(reduced->reduced_jacobian[b], u.t().mm(full).mm(v)), 1e-12);
      }
      EXPECT_LT(RelativeError(reduced->q, *model->Evaluate(m)), 1e-15);
    }
  }
}

// A batch of mixed queries, computed together (points in parallel), answers each query as it
// is answered alone.
TEST(PdeSolverModel, BatchedEqualsUnbatched) {
  at::set_num_threads(2);
  auto model = Pde(pipeline::Problem::kReactionDiffusion, 8);
  const torch::Tensor m = PriorSamples(*model, 4, 13);
  torch::manual_seed(17);
  std::vector<Query> queries(5);
  queries[0].method = Method::kEvaluate;
  queries[0].m = m;
  queries[1].method = Method::kJvp;
  queries[1].m = m.narrow(0, 0, 2);
  queries[1].directions = torch::randn({2, 3, 81}, torch::kFloat64);
  queries[1].want_q = true;
  queries[2].method = Method::kVjp;
  queries[2].m = m[2];
  queries[2].cotangents = torch::randn({2, 50}, torch::kFloat64);
  queries[3].method = Method::kReducedJacobian;
  queries[3].m = m.narrow(0, 1, 3);
  queries[3].output_basis = Orthonormal(50, 6, 3);
  queries[3].input_basis = Orthonormal(81, 7, 4);
  queries[4].method = Method::kJacobian;
  queries[4].m = m[3];
  queries[4].want_q = true;
  std::vector<PreparedQuery> prepared;
  for (const Query& query : queries) prepared.push_back(*model->Prepare(query));
  std::vector<const PreparedQuery*> batch;
  for (const PreparedQuery& p : prepared) batch.push_back(&p);
  std::vector<absl::StatusOr<Answer>> together = model->Compute(batch);
  for (size_t i = 0; i < queries.size(); ++i) {
    SCOPED_TRACE(MethodName(queries[i].method));
    auto alone = model->Run(queries[i]);
    ASSERT_TRUE(alone.ok() && together[i].ok());
    ASSERT_EQ(together[i]->values.sizes(), alone->values.sizes());
    EXPECT_LT(RelativeError(together[i]->values, alone->values), 1e-14);
    ASSERT_EQ(together[i]->q.defined(), alone->q.defined());
    if (alone->q.defined()) {
      EXPECT_LT(RelativeError(together[i]->q, alone->q), 1e-14);
    }
  }
}

TEST(PdeSolverModel, AnswersFloat32RequestsByConversion) {
  auto model = Pde(pipeline::Problem::kPoisson, 4);
  const torch::Tensor m = PriorSamples(*model, 2, 1);
  Query query;
  query.method = Method::kEvaluate;
  query.m = m.to(torch::kFloat32);
  query.output_dtype = torch::kFloat32;
  auto answer = model->Run(query);
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->values.scalar_type(), torch::kFloat32);
  EXPECT_LT(
      RelativeError(answer->values, *model->Evaluate(m.to(torch::kFloat32).to(torch::kFloat64))),
      1e-6);
}

TEST(PdeSolverModel, RefusesParametersWhoseCoefficientOverflows) {
  auto model = Pde(pipeline::Problem::kPoisson, 4);
  torch::Tensor m = torch::zeros({2, 25}, torch::kFloat64);
  m[1][3] = 800.0;
  auto answer = model->Evaluate(m);
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(answer.status().message(), HasSubstr("m[1, 3] = 800"));
}

// Writes `text` as <root>/<name>/1/pde.json and loads it.
absl::Status LoadPdeJson(const std::string& root, const std::string& name,
                         const std::string& text) {
  std::filesystem::create_directories(root + "/" + name + "/1");
  std::ofstream(root + "/" + name + "/1/pde.json") << text;
  return LoadModelVersion(root + "/" + name + "/1/pde.json", ComputeLimits{}).status();
}

TEST(PdeSolverModel, InvalidPdeJsonErrorsNameTheKey) {
  const std::string root = testing::MakeTempDir("dino-pde-json-");
  const std::pair<const char*, const char*> cases[] = {
      {"{\"problem\": ", "is not valid JSON"},
      {"[1, 2]", "must hold a JSON object"},
      {"{}", "problem is required"},
      {"{\"problem\": 3}", "problem must be a string"},
      {"{\"problem\": \"heat\"}", "problem: unknown problem 'heat'"},
      {"{\"problem\": \"poisson\", \"mesh_cells\": 1}",
       "mesh_cells must be an integer in [2, 1024], got 1"},
      {"{\"problem\": \"poisson\", \"mesh_cells\": 6.5}", "mesh_cells must be an integer"},
      {"{\"problem\": \"poisson\", \"mesh_cells\": \"8\"}", "mesh_cells must be an integer"},
      {"{\"problem\": \"poisson\", \"mesh\": 8}", "unknown key 'mesh' (known: problem, mesh_cells"},
      {"{\"problem\": \"poisson\", \"observation_points\": []}",
       "observation_points must be a non-empty array"},
      {"{\"problem\": \"poisson\", \"observation_points\": [[0.5, 0.5], [0.5]]}",
       "observation_points[1] must be [x, y]"},
      {"{\"problem\": \"poisson\", \"observation_points\": [[1.5, 0.5]]}",
       "observation_points[0] must be [x, y] with 0 ≤ x, y ≤ 1"},
      {"{\"problem\": \"poisson\", \"description\": 5}", "description must be a string"},
  };
  int index = 0;
  for (const auto& [text, expected] : cases) {
    SCOPED_TRACE(text);
    const std::string name = "bad" + std::to_string(index++);
    absl::Status status = LoadPdeJson(root, name, text);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(name + "/1/pde.json: "));
    EXPECT_THAT(status.message(), HasSubstr(expected));
  }
  std::filesystem::remove_all(root);
}

TEST(PdeSolverModel, CustomObservationPoints) {
  const std::string root = testing::MakeTempDir("dino-pde-points-");
  ASSERT_TRUE(LoadPdeJson(root, "points",
                          R"({"problem": "poisson", "mesh_cells": 4,
                              "observation_points": [[0.5, 0.5], [0.25, 0.75], [1, 1]]})")
                  .ok());
  auto model = LoadModelVersion(root + "/points/1/pde.json", ComputeLimits{});
  ASSERT_TRUE(model.ok());
  EXPECT_EQ((*model)->info().output_dim, 3);
  EXPECT_EQ((*model)->info().metadata["observation_points"], "custom");
  // u = 1 on the top edge: the observation at (1, 1) reads the boundary value.
  auto q = (*model)->Evaluate(torch::zeros({25}, torch::kFloat64));
  ASSERT_TRUE(q.ok());
  EXPECT_NEAR((*q)[0][2].item<double>(), 1.0, 1e-12);
  std::filesystem::remove_all(root);
}

// The repository scanner and manager serve pde.json folders under config.json's policies; a
// broken one is reported naming the key and the others serve; a folder with both model.pt
// and pde.json is refused.
TEST(PdeSolverModel, RepositoryServesPdeFolders) {
  const std::string root = testing::MakeTempDir("dino-pde-repo-");
  for (int version : {1, 2}) {
    std::filesystem::create_directories(root + "/poisson_pde/" + std::to_string(version));
    std::ofstream(root + "/poisson_pde/" + std::to_string(version) + "/pde.json")
        << R"({"problem": "poisson", "mesh_cells": )" << 2 + 2 * version << "}";
  }
  std::filesystem::create_directories(root + "/broken/1");
  std::ofstream(root + "/broken/1/pde.json") << R"({"problem": "poisson", "mesh_cells": 0})";
  testing::WriteModel(testing::SmallGeneric(testing::SmallDims{}, torch::kFloat64, 1),
                      testing::SmallMetadata("generic", 40), root, "both", 1);
  std::ofstream(root + "/both/1/pde.json") << R"({"problem": "poisson"})";

  ModelManager::Options options;
  options.repository = root;
  {
    ModelManager manager(options);
    auto report = manager.SyncRepository();
    ASSERT_TRUE(report.ok());
    EXPECT_THAT(report->loaded, ::testing::ElementsAre("poisson_pde/2"));
    EXPECT_THAT(::testing::PrintToString(report->failed),
                HasSubstr("broken/1/pde.json: mesh_cells must be an integer in [2, 1024], got 0"));
    EXPECT_THAT(::testing::PrintToString(report->failed),
                HasSubstr("holds both model.pt and pde.json"));
    auto handle = manager.Get("poisson_pde", 0);
    ASSERT_TRUE(handle.ok());
    EXPECT_EQ(handle->version, 2);
    EXPECT_EQ(handle->model->info().input_dim, 49);
  }
  // Version policies apply as to any model.
  std::ofstream(root + "/poisson_pde/config.json") << R"({"version_policy": {"all": {}}})";
  {
    ModelManager manager(options);
    ASSERT_TRUE(manager.SyncRepository().ok());
    auto first = manager.Get("poisson_pde", 1);
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(first->model->info().input_dim, 25);
    EXPECT_TRUE(manager.SetDefaultVersion("poisson_pde", 1).ok());
    EXPECT_EQ(manager.Get("poisson_pde", 0)->version, 1);
  }
  std::filesystem::remove_all(root);
}

// A DINO serves the prior of the problem its metadata names, if its d_M is that problem's.
TEST(ModelPriorFromMetadata, NamesTheProblemsPrior) {
  PriorLookup named = PriorFromMetadata(
      nlohmann::json::parse(R"({"problem": {"name": "poisson", "mesh_cells": 4}})"), 25);
  ASSERT_NE(named.prior, nullptr) << named.why_none;
  EXPECT_EQ(named.prior->mesh_cells(), 4);
  EXPECT_EQ(named.source, "metadata \"problem\"");
  // The same problem and mesh: one shared instance (e.g. with the PDE model).
  EXPECT_EQ(Pde(pipeline::Problem::kPoisson, 4)->prior()->get(), named.prior.get());

  PriorLookup provenance = PriorFromMetadata(
      nlohmann::json::parse(
          R"({"data": {"train": {"generated_by": "dino-train generate --problem reaction_diffusion --samples 9 --mesh=4"}}})"),
      25);
  ASSERT_NE(provenance.prior, nullptr) << provenance.why_none;
  EXPECT_EQ(provenance.prior->problem(), pipeline::Problem::kReactionDiffusion);
  EXPECT_EQ(provenance.source, "metadata data.train.generated_by");

  const std::pair<const char*, const char*> none[] = {
      {"{}", "names no problem"},
      {R"({"problem": "poisson"})", "metadata \"problem\" must be"},
      {R"({"problem": {"name": "heat", "mesh_cells": 4}})", "unknown problem 'heat'"},
      {R"({"problem": {"name": "poisson", "mesh_cells": 8}})",
       "names poisson on a 8 × 8 mesh (d_M = 81), but the model's d_M is 25"},
      {R"({"data": {"train": {"generated_by": "dino-train generate --problem poisson"}}})",
       "(d_M = 4225), but the model's d_M is 25"},
      {R"({"data": {"train": {"generated_by": "python make_data.py"}}})",
       "is not a dino-train generate command"},
  };
  for (const auto& [metadata, why] : none) {
    SCOPED_TRACE(metadata);
    PriorLookup lookup = PriorFromMetadata(nlohmann::json::parse(metadata), 25);
    EXPECT_EQ(lookup.prior, nullptr);
    EXPECT_THAT(lookup.why_none, HasSubstr(why));
  }
}

// The bundled surrogate names the problem it was trained on: it serves the Poisson prior on
// the 64 × 64 mesh, the prior and parameter space of the bundled poisson_pde.
TEST(ModelPriorFromMetadata, BundledDipnetServesThePoissonPrior) {
  const std::string bundled = std::string(DINO_SOURCE_DIR) + "/models/repository/";
  auto dipnet = LoadModelVersion(bundled + "poisson_dipnet/3/model.pt", ComputeLimits{});
  auto pde = LoadModelVersion(bundled + "poisson_pde/1/pde.json", ComputeLimits{});
  ASSERT_TRUE(dipnet.ok()) << dipnet.status();
  ASSERT_TRUE(pde.ok()) << pde.status();
  EXPECT_EQ((*dipnet)->info().input_dim, (*pde)->info().input_dim);
  EXPECT_EQ((*dipnet)->info().output_dim, (*pde)->info().output_dim);
  EXPECT_TRUE((*dipnet)->info().has_prior);
  EXPECT_EQ((*dipnet)->prior()->get(), (*pde)->prior()->get());
  EXPECT_EQ((*dipnet)->prior_source(), "metadata data.train.generated_by");
  // And it approximates this map (test L2 accuracy 0.95): the same observations of the same
  // parameter field, not merely the same dimensions.
  const torch::Tensor m = *(*(*pde)->prior())->Sample(4, 99, 0, 1024);
  EXPECT_LT(RelativeError(*(*dipnet)->Evaluate(m), *(*pde)->Evaluate(m)), 0.2);
}

}  // namespace
}  // namespace dino::serving
